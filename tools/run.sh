#!/usr/bin/env bash
# Installs dependencies, builds, and runs the main program on the embedded default model.
# Extra arguments go to the program (e.g. --prompt "..." --max-tokens 32).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)" --target sals-generate
"$BUILD_DIR"/tools/generate/sals-generate --model models/default "$@"
