#!/bin/sh
# A fake CNI plugin for crius-cni's tests. Tests symlink it under the plugin's name into a temp
# plugin dir; it logs what it was given into <dir>/log and then acts as <dir>/<name>.conf says
# (shell assignments: mode, version, ip). Checked in (not written by the tests) so no test ever
# executes a file that another test thread might still hold open for writing.
set -eu
dir=$(dirname "$0")
name=$(basename "$0")
mode=ok
version=1.0.0
ip=1
if [ -f "$dir/$name.conf" ]; then . "$dir/$name.conf"; fi
log="$dir/log"
mkdir -p "$log"
cat > "$log/$name.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "$log/$name.$CNI_COMMAND.env"
echo "$name $CNI_COMMAND" >> "$log/calls"

error() {
    printf '{"cniVersion":"%s","code":%s,"msg":"%s","details":"%s"}' "$version" "$1" "$2" "$3"
    exit 1
}

case "$mode" in
    sleep) echo $$ > "$log/$name.pid"; exec sleep 30 ;;
    sleep_group) sleep 30 & echo $! > "$log/$name.child"; wait; exit 0 ;;
    fail) error 11 "try again later" "busy: $CNI_COMMAND" ;;
    fail_add) if [ "$CNI_COMMAND" = ADD ]; then error 7 "invalid config" "from $name"; fi ;;
    stderr) echo "boom on stderr" >&2; exit 3 ;;
    garbage) if [ "$CNI_COMMAND" = ADD ]; then echo "not json"; fi; exit 0 ;;
esac

if [ "$CNI_COMMAND" = ADD ]; then
    printf '{"cniVersion":"%s","from":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],' \
        "$version" "$name" "$CNI_IFNAME" "$CNI_NETNS"
    printf '"ips":[{"version":"4","address":"10.0.0.%s/24","gateway":"10.0.0.254","interface":0}]}' "$ip"
fi
