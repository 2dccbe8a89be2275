#!/usr/bin/env bash
# Installs dependencies, builds everything (CUDA code too when nvcc exists), checks formatting
# and runs every test. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bash tools/check_format.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
# GPU tests (label gpu) run on the GPU machine only: tools/gpu/README.md.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" -LE gpu
