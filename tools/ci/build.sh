#!/usr/bin/env bash
# The one build CI (tools/run_tests.sh) and the container image (Dockerfile) share:
#   tools/ci/build.sh BUILD_DIR [cmake -D options...]
# Configures a Release build with Ninja (later -D options win, e.g. -DSALS_BUILD_TESTS=OFF or
# -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSALS_SANITIZE=ON) and builds every target, CUDA code too
# when nvcc is on PATH. JOBS (default: every core) bounds the parallel compiles.
set -euo pipefail
cd "$(dirname "$0")/../.."
build_dir=${1:?usage: tools/ci/build.sh BUILD_DIR [cmake options...]}
shift
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}"
