#!/usr/bin/env bash
# README command 2: install dependencies, build, and run the whole test suite; then the same
# suite on an ASan+UBSan build; then the libFuzzer targets (clang) for a bounded time each.
# HANGAR_SKIP_SANITIZE=1 skips the second pass, HANGAR_SKIP_FUZZ=1 the third;
# HANGAR_FUZZ_SECONDS sets the time per fuzz target (default 45). The sanitizer pass leaves out
# the tests labelled release_only.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$src} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}
t0=$SECONDS
phase() {  # how long each phase took, for the record
    echo "== test.sh: $1 done at $((SECONDS - t0)) s"
}
"$src/scripts/setup.sh"
phase setup
BUILD_DIR=$src/build "$src/scripts/build.sh"
phase "release build"
"$src/scripts/build-debian-rootfs.sh" >/dev/null  # cached; the container tests import it
phase "debian rootfs"
(cd "$src/build" && ctest --output-on-failure --timeout 600)
phase "release suite"
if [ "${HANGAR_SKIP_SANITIZE:-0}" != 1 ]; then
    BUILD_DIR=$src/build-asan BUILD_TYPE=Debug "$src/scripts/build.sh" -DHANGAR_SANITIZE=ON
    phase "sanitizer build"
    # The journeys labelled release_only (guest, browser and systemd waits) ran above.
    (cd "$src/build-asan" && ctest --output-on-failure --timeout 900 -LE release_only)
    phase "sanitizer suite"
fi
if [ "${HANGAR_SKIP_FUZZ:-0}" != 1 ]; then
    cmake -S "$src" -B "$src/build-fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER=clang++ -DHANGAR_FUZZ=ON \
        -DHANGAR_FUZZ_SECONDS="${HANGAR_FUZZ_SECONDS:-45}" >/dev/null
    cmake --build "$src/build-fuzz" --target fuzz_http fuzz_qmp fuzz_catalog
    (cd "$src/build-fuzz" && ctest --output-on-failure --timeout 900)
    phase fuzz
fi
