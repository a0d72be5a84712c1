#!/usr/bin/env bash
# run.sh TARGET SEEDS [SECONDS]: fuzzes TARGET for SECONDS (default 60) starting from the seed
# corpus (read-only; new inputs go to a scratch dir). Crashing inputs are kept in
# $HANGAR_FUZZ_ARTIFACTS (default /tmp/hangar-fuzz-artifacts) and fail the run.
set -euo pipefail
target=$1 seeds=$2 seconds=${3:-60}
[ -n "$seconds" ] || seconds=60
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=${HANGAR_FUZZ_ARTIFACTS:-/tmp/hangar-fuzz-artifacts}
mkdir -p "$artifacts"

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
"$target" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work" "$seeds" 2>&1 | tail -25
exit "${PIPESTATUS[0]}"
