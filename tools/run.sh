#!/usr/bin/env bash
# Installs dependencies, builds, and serves the embedded default model (models/default) over gRPC
# on 0.0.0.0:50051 with Prometheus metrics on :9464. Extra arguments go to sals-server
# (e.g. --set "kv_cache.format=dense" or --config configs/server.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)" --target sals-server
exec "$BUILD_DIR"/server/sals-server --model models/default "$@"
