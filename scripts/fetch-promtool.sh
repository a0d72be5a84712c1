#!/usr/bin/env bash
# Prints the path of a promtool binary taken from Debian's prometheus package without
# installing it (installing would start a Prometheus server). Cached in HANGAR_CACHE.
set -euo pipefail
cache_root=${HANGAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar}
ver=$(apt-cache policy prometheus | awk '/Candidate:/{print $2}')
[ -n "$ver" ] && [ "$ver" != "(none)" ] || { echo "fetch-promtool: no prometheus package" >&2; exit 1; }
dir="$cache_root/promtool-${ver//[^A-Za-z0-9.+-]/_}"
if [ ! -x "$dir/promtool" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "prometheus=$ver" >/dev/null 2>&1) ||
        { echo "fetch-promtool: apt-get download prometheus failed" >&2; exit 1; }
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p "$dir"
    cp "$work/x/usr/bin/promtool" "$dir/promtool.tmp" && mv "$dir/promtool.tmp" "$dir/promtool"
fi
echo "$dir/promtool"
