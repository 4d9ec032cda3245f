# crius: setup, build, run, test. Everything here is what README.md and .ci/run call.
SHELL := /bin/bash
CARGO ?= cargo
# Debian packages: protoc for k8s-cri's build, the CNI plugins, iproute2/iptables for CNI and the tests,
# util-linux's nsenter for the tests, qemu + busybox-static + xz for the cgroup v2 VM tier, docker-registry (the
# CNCF distribution registry) for the image tests; skopeo, containerd and runc for the benchmark's comparisons (its
# smoke test runs in the suite); python3-kubernetes + python3-websocket (WebSocket) and golang-go + spdystream (SPDY)
# for the independent streaming clients; openssl and curl for the streaming TLS test.
APT_PACKAGES := protobuf-compiler containernetworking-plugins iproute2 iptables util-linux \
	busybox-static qemu-system-x86 xz-utils ca-certificates docker-registry skopeo containerd runc \
	python3-kubernetes python3-websocket golang-go golang-github-docker-spdystream-dev openssl curl

.PHONY: setup setup-packages setup-python vm-setup build release run test lint bench

setup: setup-packages setup-python vm-setup

setup-packages:
	@missing=(); for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing+=($$p); \
	done; \
	if [ $${#missing[@]} -gt 0 ]; then \
	  echo "setup: installing $${missing[*]}"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}"; \
	fi

# grpcio for the independent CRI client test (e2e/python/cri_client.py), from PyPI. Debian's own python3 refuses
# pip installs into the system (PEP 668) unless told; pip itself comes from python3-pip there.
PIP_INSTALL := python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools
setup-python:
	@python3 -c 'import grpc, grpc_tools' 2>/dev/null || { python3 -m pip --version >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip; }; \
	  $(PIP_INSTALL) 2>/dev/null || $(PIP_INSTALL) --break-system-packages; }

vm-setup: setup-packages
	e2e/vm/vm-setup.sh --no-apt

build: setup-packages
	$(CARGO) build --workspace

# crius-pause and crius-monitor (one of each per pod) are linked statically in release builds: their pages are
# then shared by every pod of the node and they stay small (dynamically linked, glibc and the loader alone take
# ~1.7 MB of VmRSS). Not position-independent either: a static PIE relocates its .data.rel.ro at startup, which
# dirties ~300 KiB per process and maps ~600 KiB more. Built for size, with whole-program LTO (this build only; the
# agent keeps the release profile): fewer code pages touched, so a monitor with 5 containers stays under 2 MB RSS.
release: setup-packages
	$(CARGO) build --workspace --release
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
	  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" $(CARGO) build --release \
	  -p crius-sandbox --bin crius-pause \
	  --bin crius-monitor --target x86_64-unknown-linux-gnu
	cp target/x86_64-unknown-linux-gnu/release/crius-pause target/release/crius-pause
	cp target/x86_64-unknown-linux-gnu/release/crius-monitor target/release/crius-monitor

# One command that runs crius on a fresh machine, with the embedded default config.
run: release
	./target/release/crius serve

lint: setup-packages
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The benchmark against containerd (and skopeo for pulls), release builds; BENCH_ARGS picks the benchmark and its
# options (crius-bench --help).
BENCH_ARGS ?= pull
bench: release
	$(CARGO) build --release -p crius-e2e --bin crius-bench
	CRIUS_BIN=$(CURDIR)/target/release/crius ./target/release/crius-bench $(BENCH_ARGS)

# One command that runs all tests: lints, unit, privileged integration, e2e and the cgroup v2 VM tier.
test: setup lint build
	$(CARGO) test --workspace --no-fail-fast
