#!/usr/bin/env bash
# Installs dependencies, checks formatting, builds everything (CUDA code too when nvcc exists) and
# runs every test; then builds again with AddressSanitizer + UndefinedBehaviorSanitizer (CPU
# code) and runs every test there. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/check_format.sh
BUILD_DIR=${BUILD_DIR:-build}
jobs=$(nproc)
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$jobs"
# GPU tests (label gpu) run on the GPU machine only: tools/gpu/README.md.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$jobs" -LE gpu

SAN_DIR=${SAN_DIR:-build-asan}
cmake -S . -B "$SAN_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSALS_SANITIZE=ON \
  -DSALS_WITH_CUDA=OFF
cmake --build "$SAN_DIR" -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$SAN_DIR" --output-on-failure -j "$jobs" -LE gpu
