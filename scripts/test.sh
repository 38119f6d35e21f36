#!/bin/sh
# README command 2 (and CI): install what is needed, build, run the whole test suite.
# RN_TEST_LABELS (a ctest -L regex) narrows it; RN_SANITIZE=1 builds with ASan+UBSan into
# build-asan and runs the suite there.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
if [ "${RN_SANITIZE:-0}" = 1 ]; then
  BUILD_DIR=build-asan
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRN_SANITIZE=ON >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)"
  export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
else
  BUILD_DIR=build
  sh scripts/build.sh "$BUILD_DIR"
fi
set -- --test-dir "$BUILD_DIR" --output-on-failure
[ -n "${RN_TEST_LABELS:-}" ] && set -- "$@" -L "$RN_TEST_LABELS"
exec ctest "$@"
