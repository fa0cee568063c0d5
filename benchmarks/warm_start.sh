#!/usr/bin/env bash
# Cold compile vs a start after `warm`, back to back with the same shapes: `bench --cold`, then `warm` into a
# fresh cache root, then `bench` with that root. MODES and LAYERS (empty: the embedded model's own 2) as asked.
set -euo pipefail
TOOL=${TOOL:-llama-graph-patch}
OUT=${OUT:-results}
NAME=${NAME:-warm-start}
MODES=${MODES:-max-autotune,reduce-overhead,max-autotune@region,reduce-overhead@region}
SHAPES="--batch-size 4 --input-len 96 --max-new-tokens 64 ${LAYERS:+--layers $LAYERS}"
mkdir -p "$OUT"
export LLAMA_GRAPH_PATCH_CACHE=$(mktemp -d)
$TOOL bench $SHAPES --cold --modes $MODES --runs 2 --output-json $OUT/$NAME-cold.json --output-md $OUT/$NAME-cold.md
$TOOL warm $SHAPES --modes $MODES | tee $OUT/$NAME-warm.txt
$TOOL bench $SHAPES --modes $MODES --runs 2 --output-json $OUT/$NAME-warm.json --output-md $OUT/$NAME-warm.md
