#!/usr/bin/env bash
# The deployment checks CI runs once, after the Release build (tools/run_tests.sh):
#   tools/ci/validate_deploy.sh [BUILD_DIR]   (default: build)
# yamllint over deploy/; tools/ci/validate_deploy.py (Kubernetes schemas, cross-references,
# promtool check/test of the alerts, the dashboard, metric names against a live server's
# /metrics, plot.py); tools/ci/check_dockerfile.py (the Dockerfile against CI's scripts, the
# build's libraries and deploy/). Needs `tools/install_deps.sh ci` first.
set -euo pipefail
cd "$(dirname "$0")/../.."
build_dir=${1:-build}
python=.venv/bin/python
for tool in yamllint promtool "$python"; do
  if ! command -v "$tool" >/dev/null; then
    echo "validate_deploy: $tool is missing: run tools/install_deps.sh ci" >&2
    exit 1
  fi
done
start=$(date +%s)
yamllint -c deploy/.yamllint --strict deploy/
echo "ok   yamllint deploy/"
"$python" tools/ci/validate_deploy.py --build-dir "$build_dir"
"$python" tools/ci/check_dockerfile.py --build-dir "$build_dir"
echo "validate_deploy: done in $(($(date +%s) - start)) s"
