#!/usr/bin/env bash
# Installs dependencies, checks formatting, builds everything (CUDA code too when nvcc exists) and
# runs every test; validates deploy/ and the Dockerfile against that build; then builds again
# with AddressSanitizer + UndefinedBehaviorSanitizer (CPU code) and runs every test there. This is
# what CI runs (.ci/run). Builds go through tools/ci/build.sh, as the Dockerfile's does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh ci
bash tools/check_format.sh
BUILD_DIR=${BUILD_DIR:-build}
jobs=$(nproc)
JOBS=$jobs bash tools/ci/build.sh "$BUILD_DIR"
# GPU tests (label gpu) run on the GPU machine only: tools/gpu/README.md.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$jobs" -LE gpu
# Kubernetes manifests, alerts, dashboard, metric names, plot.py, Dockerfile (once, not under ASan).
bash tools/ci/validate_deploy.sh "$BUILD_DIR"

SAN_DIR=${SAN_DIR:-build-asan}
# -O1 -g1, as AddressSanitizer's documentation advises: full stack traces with file and line, and
# compiles about twice as fast as -O2 -g (the sanitized build is most of CI's time).
JOBS=$jobs bash tools/ci/build.sh "$SAN_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DSALS_SANITIZE=ON -DSALS_WITH_CUDA=OFF
# `heavy` tests (minutes of the reference model under the sanitizers; the code they drive is
# covered by the engine tests here too) run in the Release build above only.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$SAN_DIR" --output-on-failure -j "$jobs" -LE "gpu|heavy"
