#!/usr/bin/env bash
# Static checks of the deployment files: Dockerfile, Kubernetes manifests,
# Prometheus alert rules. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The PyPI tools scripts/install-test-deps.sh installs live here.
PATH="$PWD/target/ci-tools/bin:$PATH"
hadolint Dockerfile
kubernetes-validate --quiet deploy/kubernetes/*.yaml
promtool check rules deploy/prometheus/alerts.yml
python3 -c 'import json,sys; json.load(open("deploy/grafana/tidegate.json"))'
echo "deploy checks passed"
