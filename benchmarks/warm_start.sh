#!/usr/bin/env bash
# Cold compile vs a start after `warm`, embedded model, the two compiled modes in model scope.
set -euo pipefail
TOOL=${TOOL:-llama-graph-patch}
OUT=${OUT:-results}
SHAPES="--batch-size 4 --input-len 96 --max-new-tokens 64"
export LLAMA_GRAPH_PATCH_CACHE=$(mktemp -d)
$TOOL bench $SHAPES --cold --modes max-autotune,reduce-overhead --runs 2 --output-json $OUT/warm-start-cold.json --output-md $OUT/warm-start-cold.md
$TOOL warm $SHAPES --modes max-autotune,reduce-overhead
$TOOL bench $SHAPES --modes max-autotune,reduce-overhead --runs 2 --output-json $OUT/warm-start-warm.json --output-md $OUT/warm-start-warm.md
