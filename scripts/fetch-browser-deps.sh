#!/usr/bin/env bash
# Prints the node_modules directory of the browser tests (tests/e2e/browser/package.json:
# playwright-core and @novnc/novnc), installed from the npm registry into a cache keyed by that
# file (not into the tree, not globally). Needs node and npm; the browser is Debian's
# chromium (scripts/setup.sh).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
pkg="$src/tests/e2e/browser/package.json"
cache_root=${HANGAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar}
key=$(sha256sum < "$pkg" | cut -c1-16)
dir="$cache_root/browser-$key"
if [ ! -f "$dir/node_modules/@novnc/novnc/package.json" ] ||
    [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
    command -v npm >/dev/null || { echo "fetch-browser-deps: npm is missing (apt install npm)" >&2; exit 1; }
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    cp "$pkg" "$dir.tmp/package.json"
    # playwright-core downloads no browser of its own; the tests launch /usr/bin/chromium.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$dir.tmp" --no-audit --no-fund \
        --loglevel=error >&2
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
fi
echo "$dir/node_modules"
