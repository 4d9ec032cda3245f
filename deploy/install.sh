#!/usr/bin/env bash
# Installs crius on this node: binaries, default config, systemd unit. Run from the repository root as root,
# after `make release`. The CNI conflist is installed only with --with-cni-config (without it, crius uses the
# same network embedded in the binary, so a node works out of the box either way).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
with_cni=0
[ "${1:-}" = "--with-cni-config" ] && with_cni=1
for b in target/release/crius target/release/crius-pause target/release/crius-monitor; do
  [ -x "$b" ] || { echo "install.sh: $b missing; run 'make release' first" >&2; exit 1; }
done
install -D -m 0755 target/release/crius /usr/local/bin/crius
install -D -m 0755 target/release/crius-pause /usr/local/bin/crius-pause
install -D -m 0755 target/release/crius-monitor /usr/local/bin/crius-monitor
if [ ! -e /etc/crius/config.toml ]; then
  install -D -m 0644 deploy/config.toml /etc/crius/config.toml
  # The installed binary finds pause next to itself; say so explicitly for clarity.
  sed -i 's|^pause_binary = ""|pause_binary = "/usr/local/bin/crius-pause"|' /etc/crius/config.toml
fi
if [ "$with_cni" = 1 ] && [ ! -e /etc/cni/net.d/10-crius.conflist ]; then
  install -D -m 0644 deploy/10-crius.conflist /etc/cni/net.d/10-crius.conflist
fi
install -D -m 0644 deploy/crius.service /etc/systemd/system/crius.service
install -D -m 0644 README.md /usr/local/share/doc/crius/README.md
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now crius.service
  echo "crius installed and started: unix:///run/crius/crius.sock"
else
  echo "crius installed; no systemd here: start it with 'crius serve'"
fi
