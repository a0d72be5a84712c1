#!/usr/bin/env bash
# README command 1: install dependencies, build, and start hangard in the background with the
# default configuration (state dir /var/lib/hangar for root, else $XDG_STATE_HOME/hangar).
# Arguments are passed to hangard.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
"$src/scripts/setup.sh"
"$src/scripts/build.sh"
exec "${BUILD_DIR:-$src/build}/hangard" "$@"
