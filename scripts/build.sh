#!/bin/sh
# Configures and builds resnet-mpi (Release) into BUILD_DIR (default: build).
set -eu
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
