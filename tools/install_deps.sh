#!/usr/bin/env bash
# Installs every Debian package sals-serve needs. Idempotent: what is installed already is skipped
# (no apt-get update either).
#   tools/install_deps.sh      building and testing (tools/run.sh, the Dockerfile's build stage)
#   tools/install_deps.sh ci   that, and the tools of CI's deployment checks (tools/run_tests.sh):
#                              promtool (Debian's prometheus package; its service is never
#                              started), yamllint, matplotlib (loadtest/plot.py), and .venv, a
#                              virtual environment with tools/ci/requirements.txt (pinned).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-build}
case "$what" in
  build | ci) ;;
  *)
    echo "usage: tools/install_deps.sh [ci]" >&2
    exit 2
    ;;
esac
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates clang-format
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  prometheus-cpp-dev libyaml-cpp-dev
  libpcre2-dev nlohmann-json3-dev libeigen3-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3
)
if [ "$what" = ci ]; then
  packages+=(prometheus yamllint python3-matplotlib python3-venv)
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  # Packages with services (prometheus) must not start them: a policy-rc.d that refuses, unless
  # the machine has its own.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then
    $SUDO rm -f "$policy"
    trap - EXIT
  fi
  # On a machine run by systemd, keep Prometheus from starting at boot too: only promtool is used.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

if [ "$what" = ci ]; then
  venv=.venv
  requirements=tools/ci/requirements.txt
  if [ ! -x "$venv/bin/python" ]; then /usr/bin/python3 -m venv "$venv"; fi
  # Reinstall only when a pinned version is missing.
  if ! "$venv/bin/python" - "$requirements" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, pinned = line.split("==")
        if version(name) != pinned:
            sys.exit(1)
PY
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir \
      -r "$requirements"
  fi
fi
