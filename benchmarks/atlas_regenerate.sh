#!/usr/bin/env bash
# Regenerate the regime atlas page docs/atlas.md and its figures docs/atlas/*.png (issue 23):
# both atlas sweeps at seeds 0, 1, 2 (their `seeds` axis), then `tdlens atlas --explain`,
# which tests each label's representative run (seed 0) by its intervention twin (a diverged
# label's twins from the start, for the run's whole 80 iterations; the others for
# EXPLAIN_ITERS past the run's end). The
# page's hand-written tail ("Is moving-target ever the cause?") is kept.
#
#   benchmarks/atlas_regenerate.sh [OUT]      # from the repository root; OUT default outputs/atlas_regen
#
# Environment: TDLENS (default: tdlens), JOBS (default 2), EXPLAIN_ITERS (default 20).
# Prints the wall time of each step; docs/atlas.md records the last one's.
set -euo pipefail
OUT=${1:-outputs/atlas_regen}
TDLENS=${TDLENS:-tdlens}
JOBS=${JOBS:-2}
EXPLAIN_ITERS=${EXPLAIN_ITERS:-20}
mkdir -p "$OUT"

sweep() {  # a sweep with diverged runs exits 1: that is a finished sweep, not a failure
    local spec=$1 name=$2 t0 rc=0
    t0=$(date +%s)
    nice "$TDLENS" sweep "$spec" --jobs "$JOBS" --output-dir "$OUT" >"$OUT/$name.log" 2>&1 || rc=$?
    if [ "$rc" -gt 1 ]; then
        echo "tdlens sweep $spec failed (exit $rc): see $OUT/$name.log" >&2
        exit "$rc"
    fi
    echo "$name: $(($(date +%s) - t0)) s wall"
}

sweep configs/sweeps/atlas.yaml atlas
sweep configs/sweeps/atlas_tracking.yaml atlas_tracking
STEP=$(ls -td "$OUT"/*_atlas | head -1)
TRACK=$(ls -td "$OUT"/*_atlas_tracking | head -1)
t0=$(date +%s)
nice "$TDLENS" atlas "$STEP" "$TRACK" --docs docs/atlas.md --explain \
    --explain-iters "$EXPLAIN_ITERS" --jobs "$JOBS"
echo "atlas --explain: $(($(date +%s) - t0)) s wall"
