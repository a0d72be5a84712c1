#!/usr/bin/env bash
# Configures and builds hangar into BUILD_DIR (default: build), then makes the built-in guest
# available under BUILD_DIR/share/hangar/guest. Extra arguments go to cmake.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$src/build}
# Clones of the tree at other paths share ccache's objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$src} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-true}
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"
"$src/scripts/build-guest.sh" "$build/share/hangar/guest" >/dev/null
