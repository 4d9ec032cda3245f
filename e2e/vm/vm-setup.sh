#!/usr/bin/env bash
# vm-setup.sh - prepare this host for vm-run.sh (the cgroup v2 VM tier of the e2e tests).
#
#   1. installs qemu-system-x86, busybox-static and xz-utils with apt-get if missing (unless --no-apt);
#   2. fetches the Debian kernel that linux-image-amd64 depends on (`apt-get download`), unpacks it with
#      `dpkg-deb -x` and writes modules.dep with `busybox depmod` (no kmod needed);
#   3. extracts the uncompressed ELF vmlinux from the bzImage: qemu boots it directly (PVH), which skips
#      firmware and in-guest decompression (about 9 s per boot under TCG);
#   4. points <cache>/current at that kernel.
# Idempotent: a second run only checks and returns.
#
# Usage: vm-setup.sh [--cache DIR] [--kernel-package linux-image-X.Y.Z-N-amd64] [--no-apt]
#   --cache DIR   default: $CRIUS_VM_CACHE or /var/cache/crius-vm
#
# Layout: <cache>/kernels/<kver>/{vmlinux,lib/modules/<kver>/...}, <cache>/current -> kernels/<kver>
set -euo pipefail

CACHE=${CRIUS_VM_CACHE:-/var/cache/crius-vm}
PKG=""
APT=1
die() { echo "vm-setup: error: $*" >&2; exit 1; }
say() { echo "vm-setup: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cache) CACHE=${2:?--cache needs a directory}; shift 2 ;;
    --kernel-package) PKG=${2:?--kernel-package needs a package name}; shift 2 ;;
    --no-apt) APT=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and vm-run.sh exports / over 9p)"

if [ "$APT" = 1 ]; then
  missing=()
  for p in qemu-system-x86 busybox-static xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
command -v busybox >/dev/null || die "busybox not found (apt-get install busybox-static)"

kernel_dep() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
if [ -z "$PKG" ]; then
  PKG=$(kernel_dep)
  # Offline with no apt lists: keep the kernel we already have rather than failing.
  if [ -z "$PKG" ] && [ -L "$CACHE/current" ]; then PKG=linux-image-$(basename "$(readlink "$CACHE/current")"); fi
  [ -n "$PKG" ] || { apt-get update -qq; PKG=$(kernel_dep); }
  [ -n "$PKG" ] || die "cannot resolve linux-image-amd64 to a versioned kernel package"
fi
case "$PKG" in linux-image-[0-9]*) ;; *) die "not a versioned kernel package: $PKG" ;; esac
KVER=${PKG#linux-image-}
KVER=${KVER%-unsigned}
DEST=$CACHE/kernels/$KVER

# Read a little-endian unsigned integer of $3 bytes at offset $2 of file $1.
le() { od -An -tu"$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' '; }

# The bzImage's setup header says where the compressed kernel is (boot protocol >= 2.08); the payload's
# last 4 bytes are its uncompressed size, which no decompressor wants to see.
extract_vmlinux() {  # bzImage output
  local img=$1 out=$2 sects off len magic dec
  sects=$(le "$img" $((0x1f1)) 1); [ "$sects" = 0 ] && sects=4
  off=$(( (sects + 1) * 512 + $(le "$img" $((0x248)) 4) ))
  len=$(le "$img" $((0x24c)) 4)
  magic=$(od -An -tx1 -j "$off" -N 4 "$img" | tr -d ' ')
  case "$magic" in
    fd377a58) dec="xz -dc" ;;
    28b52ffd) dec="zstd -dcq" ;;
    1f8b08*) dec="gzip -dc" ;;
    *) die "unknown kernel payload compression (magic $magic) in $img" ;;
  esac
  head -c $((off + len - 4)) "$img" | tail -c $((len - 4)) | $dec > "$out.tmp" || die "cannot decompress $img with $dec"
  [ "$(od -An -tx1 -N 4 "$out.tmp" | tr -d ' ')" = 7f454c46 ] || die "decompressed kernel is not an ELF file"
  mv "$out.tmp" "$out"
}

if [ -s "$DEST/vmlinux" ] && [ -s "$DEST/lib/modules/$KVER/modules.dep" ]; then
  say "kernel $KVER already in $DEST"
else
  mkdir -p "$CACHE/kernels"
  TMPD=$(mktemp -d "$CACHE/kernels/.fetch.XXXXXX")
  trap 'rm -rf "$TMPD"' EXIT
  say "downloading $PKG"
  # apt-get download writes to the cwd (as _apt if it can, else as root, with a harmless notice).
  (cd "$TMPD" && apt-get download -qq "$PKG" 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
  deb=$(find "$TMPD" -maxdepth 1 -name '*.deb' | head -n1)
  [ -n "$deb" ] || die "apt-get download $PKG produced no .deb"
  dpkg-deb -x "$deb" "$TMPD/x"
  [ -d "$TMPD/x/lib/modules/$KVER" ] || { mkdir -p "$TMPD/x/lib/modules"; mv "$TMPD/x/usr/lib/modules/$KVER" "$TMPD/x/lib/modules/"; } \
    || die "$PKG has no modules for $KVER"
  [ -f "$TMPD/x/boot/vmlinuz-$KVER" ] || die "$PKG has no boot/vmlinuz-$KVER"
  say "writing modules.dep (busybox depmod, ~10 s) and extracting vmlinux"
  busybox depmod -b "$TMPD/x" "$KVER"
  [ -s "$TMPD/x/lib/modules/$KVER/modules.dep" ] || die "busybox depmod wrote no modules.dep"
  extract_vmlinux "$TMPD/x/boot/vmlinuz-$KVER" "$TMPD/x/vmlinux"
  basename "$deb" > "$TMPD/x/SOURCE"
  rm -rf "$DEST"
  mv "$TMPD/x" "$DEST"
fi
ln -sfn "kernels/$KVER" "$CACHE/current"
say "ready: $CACHE/current -> kernels/$KVER"
