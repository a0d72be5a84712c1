#!/usr/bin/env bash
# README command 2: install dependencies, build, and run the whole test suite, then the same
# suite again on an ASan+UBSan build. Set HANGAR_SKIP_SANITIZE=1 to skip the second pass.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
"$src/scripts/setup.sh"
BUILD_DIR=$src/build "$src/scripts/build.sh"
(cd "$src/build" && ctest --output-on-failure --timeout 600)
if [ "${HANGAR_SKIP_SANITIZE:-0}" != 1 ]; then
    BUILD_DIR=$src/build-asan BUILD_TYPE=Debug "$src/scripts/build.sh" -DHANGAR_SANITIZE=ON
    (cd "$src/build-asan" && ctest --output-on-failure --timeout 900)
fi
