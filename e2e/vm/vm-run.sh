#!/usr/bin/env bash
# vm-run.sh - run one command in a fresh, throwaway qemu VM (TCG) with a real cgroup v2 hierarchy.
#
# The VM boots the Debian kernel prepared by vm-setup.sh. Its root filesystem is this host's /, shared
# read-only over virtio-9p under a tmpfs overlay: host binaries and build outputs are visible at the same
# paths, and every write is discarded at power-off. In the VM: proc, sys, devtmpfs, devpts, /dev/shm, tmpfs
# /run and /tmp (fresh and empty), cgroup2 at /sys/fs/cgroup with every controller enabled in the root's
# cgroup.subtree_control, kernel modules loaded on demand (veth, bridge, netfilter...), lo up, / rshared.
# The command runs as root with a clean environment in the given directory; its stdout+stderr (merged,
# not a tty) are streamed to this script's stdout.
#
# Usage: vm-run.sh [options] -- COMMAND [ARG...]
#   -m, --mem SIZE       guest RAM (default 2G)
#   -c, --cpus N         vCPUs (default: host nproc)
#   -t, --timeout SECS   power the VM off after SECS seconds and exit 124 (default 600)
#   -C, --cwd DIR        working directory in the VM (default: $PWD; not under /run, /proc, /sys, /dev; under
#                        /tmp the host's /tmp stays visible, copy-on-write, instead of a fresh tmpfs)
#   -e, --env NAME=VALUE set a variable for the command; `-e NAME` passes the host's value (repeatable).
#                        Always set: PATH (the host's), HOME=/root, USER=root, TERM=dumb, LANG=C.UTF-8
#       --cache DIR      kernel cache of vm-setup.sh (default: $CRIUS_VM_CACHE or /var/cache/crius-vm)
#   -v, --verbose        kernel log level 7; print the guest console log at the end
#       --timing         print boot-to-command and total time on stderr
#
# Exit status: the command's; 124 on timeout; 125 when the VM failed (the console log tail is printed).
set -euo pipefail

CACHE=${CRIUS_VM_CACHE:-/var/cache/crius-vm}
MEM=2G
CPUS=$(nproc)
TIMEOUT=600
GCWD=$PWD
VERBOSE=0
TIMING=0
ENVS=()
die() { echo "vm-run: error: $*" >&2; exit 125; }

while [ $# -gt 0 ]; do
  case "$1" in
    -m|--mem) MEM=${2:?}; shift 2 ;;
    -c|--cpus) CPUS=${2:?}; shift 2 ;;
    -t|--timeout) TIMEOUT=${2:?}; shift 2 ;;
    -C|--cwd) GCWD=${2:?}; shift 2 ;;
    -e|--env) ENVS+=("${2:?}"); shift 2 ;;
    --cache) CACHE=${2:?}; shift 2 ;;
    -v|--verbose) VERBOSE=1; shift ;;
    --timing) TIMING=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done
[ $# -gt 0 ] || die "no command given (usage: vm-run.sh [options] -- COMMAND [ARG...])"
[ "$(id -u)" = 0 ] || die "must run as root (qemu exports / over 9p with passthrough ownership)"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "--cpus must be a positive integer"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds"
QEMU=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found: run e2e/vm/vm-setup.sh"
BUSYBOX=$(command -v busybox) || die "busybox not found: run e2e/vm/vm-setup.sh"
# The initramfs has no libc: busybox must be the static one.
[[ $(ldd "$BUSYBOX" 2>&1) == *"not a dynamic executable"* ]] || die "$BUSYBOX is not static: install busybox-static"
[ -L "$CACHE/current" ] || die "no VM kernel in $CACHE: run e2e/vm/vm-setup.sh (or make setup)"
KDIR=$(realpath "$CACHE/current")
KVER=$(basename "$KDIR")
MODDIR=$KDIR/lib/modules/$KVER
[ -s "$KDIR/vmlinux" ] && [ -s "$MODDIR/modules.dep" ] || die "incomplete VM kernel in $KDIR: run e2e/vm/vm-setup.sh"
GCWD=$(realpath -m -- "$GCWD")
# A checkout under /tmp (CI runners often use one) keeps the host's /tmp visible, copy-on-write like the rest
# of the root, instead of a fresh empty tmpfs.
HOST_TMP=0
case "$GCWD/" in
  /tmp/*) HOST_TMP=1 ;;
  /run/*|/proc/*|/sys/*|/dev/*) die "--cwd $GCWD is on a filesystem the VM mounts fresh" ;;
esac

RUN=$(mktemp -d "${TMPDIR:-/tmp}/crius-vm.XXXXXX")
QPID=""
stop_qemu() {
  [ -n "$QPID" ] || return 0
  kill -TERM "$QPID" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$QPID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$QPID" 2>/dev/null || true
  wait "$QPID" 2>/dev/null || true
  QPID=""
}
trap 'rc=$?; stop_qemu; rm -rf "$RUN"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# --- initramfs: static busybox, the modules needed to reach the host root, the two init stages --------
# Boot modules with everything they depend on (modules.dep lists dependencies transitively); busybox
# modprobe orders them.
IR=$RUN/initramfs
mkdir -p "$IR/bin" "$IR/proc" "$IR/sys" "$IR/dev" "$IR/lib/modules/$KVER"
cp "$BUSYBOX" "$IR/bin/busybox"
BOOT_MODS="virtio_pci 9pnet_virtio 9p overlay virtio_console"
awk -v want=" $BOOT_MODS " '{ n = $1; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n) }
  index(want, " " n " ") { print }' "$MODDIR/modules.dep" > "$IR/lib/modules/$KVER/modules.dep"
[ "$(wc -l < "$IR/lib/modules/$KVER/modules.dep")" = "$(wc -w <<< "$BOOT_MODS")" ] \
  || die "boot modules ($BOOT_MODS) not all in $MODDIR/modules.dep"
for f in $(tr -d ':' < "$IR/lib/modules/$KVER/modules.dep" | tr ' ' '\n' | sort -u); do
  mkdir -p "$IR/lib/modules/$KVER/${f%/*}"
  cp "$MODDIR/$f" "$IR/lib/modules/$KVER/$f"
done

q() { printf '%q' "$1"; }
{
  for e in "${ENVS[@]}"; do
    n=${e%%=*}
    [[ "$n" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad --env name: $n"
    if [ "$n" = "$e" ]; then v=${!n-}; else v=${e#*=}; fi
    echo "export $n=$(q "$v")"
  done
  echo "cd $(q "$GCWD") || exit 125"
  printf 'exec'; printf ' %q' "$@"; echo
} > "$IR/cmd"
printf 'KVER=%q\nMODDIR=%q\nGPATH=%q\nHOST_TMP=%q\n' "$KVER" "$MODDIR" "$PATH" "$HOST_TMP" > "$IR/conf"

# Stage 1 (/init in the initramfs): mount the host root read-only under a tmpfs overlay, switch to it.
cat > "$IR/init" <<'STAGE1'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "vm-run: stage 1: $*"; poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "mount proc/sys/dev"
modprobe -a virtio_pci 9pnet_virtio 9p overlay virtio_console || fail "cannot load the boot modules"
mkdir /lower /rw /newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /lower || fail "mount host root (9p)"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir /rw/upper /rw/work || fail "tmpfs for the overlay"
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run && mkdir /newroot/run/vm || fail "tmpfs /run"
cp /bin/busybox /stage2 /cmd /conf /newroot/run/vm/ || fail "copy stage 2"
mount --move /dev /newroot/dev || fail "move /dev"
umount /sys /proc
exec switch_root /newroot /run/vm/busybox sh /run/vm/stage2
STAGE1
chmod +x "$IR/init"

# Stage 2 (pid 1 in the overlay root): the system mounts, cgroup2, modules, lo; run the command; power off.
# It reports "start <uptime>" and "rc <status>" (or "error <what>") on the virtio port vmrun.status.
cat > "$IR/stage2" <<'STAGE2'
BB=/run/vm/busybox
. /run/vm/conf
port() { for d in /sys/class/virtio-ports/*; do [ "$($BB cat "$d/name")" = "$1" ] && echo "/dev/${d##*/}"; done; }
fail() { echo "vm-run: stage 2: $*"; echo "error $*" > "$STATUS"; $BB poweroff -f; }
$BB mount -t proc -o nosuid,nodev,noexec proc /proc
$BB mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
STATUS=$(port vmrun.status); OUT=$(port vmrun.out)
[ -c "$STATUS" ] && [ -c "$OUT" ] || { echo "vm-run: stage 2: virtio ports missing"; $BB poweroff -f; }
$BB mkdir -p /dev/pts /dev/shm /dev/mqueue
$BB mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts || fail "mount devpts"
$BB mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm || fail "mount /dev/shm"
$BB mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue || fail "mount mqueue"
for l in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
  $BB ln -sfn "${l#*:}" "/dev/${l%%:*}"
done
$BB mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
for c in $($BB cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || fail "enable cgroup controller $c"
done
# The kernel runs busybox modprobe, which finds the modules at /lib/modules/<kver> (bound from the cache).
$BB mkdir -p /lib/modules && kmd=$($BB readlink -f /lib/modules)/$KVER
$BB mkdir -p "$kmd" && $BB mount --bind "$MODDIR" "$kmd" || fail "bind the kernel modules"
$BB ln -s busybox /run/vm/modprobe && echo /run/vm/modprobe > /proc/sys/kernel/modprobe || fail "set modprobe"
[ "$HOST_TMP" = 1 ] || $BB mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp || fail "mount /tmp"
$BB mount --make-rshared / || fail "make / rshared"
$BB hostname crius-vm
$BB ip link set lo up || fail "lo up"
read -r up _ < /proc/uptime; echo "start $up" > "$STATUS"
$BB env -i PATH="$GPATH" HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8 \
  /bin/bash /run/vm/cmd < /dev/null > "$OUT" 2>&1 &
wait $!
echo "rc $?" > "$STATUS"
$BB sync
$BB poweroff -f
STAGE2

(cd "$IR" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) > "$RUN/initramfs.cpio" \
  || die "cannot build the initramfs"

# --- qemu: PVH boot of the ELF vmlinux; ttyS0 = console log; two virtio ports = output and status -------
LOGLEVEL="quiet loglevel=4"; [ "$VERBOSE" = 1 ] && LOGLEVEL="loglevel=7"
# cgroup_no_v1=all: every controller goes to cgroup2. The rest saves boot time under TCG.
CMDLINE=(console=ttyS0 rdinit=/init panic=-1 $LOGLEVEL cgroup_no_v1=all
  mitigations=off tsc=reliable no_timer_check random.trust_cpu=on pci=noacpi cryptomgr.notests)
: > "$RUN/output"; : > "$RUN/status"
# setpriv --pdeathsig: qemu dies with this script even if the script is SIGKILLed.
setpriv --pdeathsig KILL -- "$QEMU" -nodefaults -no-user-config -display none -no-reboot \
  -machine pc -accel tcg -cpu max -smp "$CPUS" -m "$MEM" \
  -kernel "$KDIR/vmlinux" -initrd "$RUN/initramfs.cpio" -append "${CMDLINE[*]}" \
  -serial "file:$RUN/console.log" \
  -fsdev local,id=root,path=/,security_model=passthrough,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
  -device virtio-serial-pci,id=vser \
  -chardev "file,id=out,path=$RUN/output" -device virtserialport,bus=vser.0,chardev=out,name=vmrun.out \
  -chardev "file,id=status,path=$RUN/status" -device virtserialport,bus=vser.0,chardev=status,name=vmrun.status \
  < /dev/null > "$RUN/qemu.log" 2>&1 &
QPID=$!

exec 3< "$RUN/output"
T0=${EPOCHREALTIME/./}
TSTART=""
TIMEDOUT=0
while kill -0 "$QPID" 2>/dev/null; do
  cat <&3
  if [ -z "$TSTART" ] && grep -q '^start' "$RUN/status"; then TSTART=${EPOCHREALTIME/./}; fi
  if [ $(( ${EPOCHREALTIME/./} - T0 )) -ge $(( TIMEOUT * 1000000 )) ]; then TIMEDOUT=1; stop_qemu; break; fi
  sleep 0.1
done
[ -z "$QPID" ] || { wait "$QPID" || true; QPID=""; }
T1=${EPOCHREALTIME/./}
cat <&3
exec 3<&-

[ "$VERBOSE" = 1 ] && { echo "--- vm-run: guest console ---"; tr -d '\r' < "$RUN/console.log"; } >&2
if [ "$TIMING" = 1 ]; then
  secs() { printf '%d.%02d' $(( $1 / 1000000 )) $(( $1 % 1000000 / 10000 )); }
  [ -n "$TSTART" ] && echo "vm-run: boot to command $(secs $((TSTART - T0)))s" >&2
  echo "vm-run: total $(secs $((T1 - T0)))s" >&2
fi
failed() {
  echo "vm-run: $*" >&2
  [ -s "$RUN/qemu.log" ] && { echo "vm-run: qemu said:"; tail -n 20 "$RUN/qemu.log"; } >&2
  [ "$VERBOSE" = 1 ] || { echo "vm-run: guest console (last lines):"; tail -n 30 "$RUN/console.log" | tr -d '\r'; } >&2
}
if [ "$TIMEDOUT" = 1 ]; then failed "timeout: powered the VM off after ${TIMEOUT}s"; exit 124; fi
rc=$(sed -n 's/^rc \([0-9]\{1,3\}\)$/\1/p' "$RUN/status")
[ -n "$rc" ] && exit "$rc"
err=$(sed -n 's/^error //p' "$RUN/status")
failed "the VM stopped without reporting the command's exit status${err:+ (guest: $err)}"
exit 125
