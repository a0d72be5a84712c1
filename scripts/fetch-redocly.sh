#!/usr/bin/env bash
# Prints the path of the Redocly CLI (the OpenAPI linter), installed from the npm registry
# into a cache keyed by its version (not into the tree, not globally). Needs node and npm.
set -euo pipefail
version=1.34.5
cache_root=${HANGAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar}
dir="$cache_root/redocly-$version"
if [ ! -x "$dir/node_modules/.bin/redocly" ]; then
    command -v npm >/dev/null || { echo "fetch-redocly: npm is missing (apt install npm)" >&2; exit 1; }
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    npm install --prefix "$dir.tmp" --no-audit --no-fund --loglevel=error \
        "@redocly/cli@$version" >&2
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
fi
echo "$dir/node_modules/.bin/redocly"
