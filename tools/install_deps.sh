#!/usr/bin/env bash
# Installs every Debian package sals-serve needs to build, test and run. Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates clang-format \
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev \
  prometheus-cpp-dev libyaml-cpp-dev \
  libpcre2-dev nlohmann-json3-dev libeigen3-dev \
  libgtest-dev libgmock-dev googletest libbenchmark-dev \
  python3 >/dev/null
