#!/usr/bin/env bash
# Fails when any of our C++/CUDA sources differs from clang-format's output (.clang-format).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files -co --exclude-standard -- \
  '*.h' '*.cc' '*.cu' '*.cuh' | grep -v '^tests/fixtures/')
if [ "${#files[@]}" -eq 0 ]; then exit 0; fi
clang-format --dry-run -Werror "${files[@]}"
echo "format: ${#files[@]} files clean"
