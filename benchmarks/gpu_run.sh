#!/usr/bin/env bash
# The GPU checks of the project, as one prepared run on a lent GPU machine (Python 3.12, its own torch).
#
#   PARTS="tiny precompiled region" OUT=dir benchmarks/gpu_run.sh
#
# Prints the summaries and writes each part's report into $OUT as soon as the part ends (a run cut off
# by its time limit keeps what finished); the logs go into $OUT/gpu-logs.tar.gz after every part.
#
# tiny:    greedy tokens of a tiny random Llama on CUDA, unpatched vs eager / max-autotune /
#          reduce-overhead, with the growing and the static KV cache, in the scopes of $TINY_SCOPES.
# precompiled: the tiny model stored ahead (LLAMA_GRAPH_PATCH_PRECOMPILE=store, what `warm` sets), then
#          loaded by a fresh process, in the compiled modes of $TINY_MODES, scopes model and region: tokens,
#          graphs traced (0 when loaded), CUDA graphs: whether aot_compile'd code captures on CUDA.
# region:  bench --preset llama2-7b ... --cold: the three modes with both caches in one bench, the compiled
#          ones in the region scope (the whole model in one graph, its decoder layer traced once)
# layers:  the same in the per-layer scope (one decoder layer compiled: minutes less than the whole model)
# static:  bench --preset llama2-7b ... --static-cache (all three modes, model scope)
# growing: bench --preset llama2-7b ... (all three modes, transformers' own growing cache, model scope)
# frozen:  the growing part with the weights frozen into the decode graph (LLAMA_GRAPH_PATCH_FREEZE=1: on CUDA
#          `auto` leaves them unfrozen until measured), and the limit: decode GB/s against the streamed and the
#          spec bandwidth, peak memory (inductor concatenates q/k/v and gate/up into copies on CUDA)
#
# Needs, in $WHEELS (default .whl): transformers 4.31.0, huggingface_hub 0.36.2, libcst and this project.
# transformers 4.31 refuses tokenizers >= 0.14, so the image's tokenizers is uninstalled first (the slow
# sentencepiece tokenizer needs none). Everything is installed into /tmp/site, first on PYTHONPATH.
set -uo pipefail

PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-$PWD/gpu-out}
WORK=${WORK:-/tmp/gpu-work}
PARTS=${PARTS:-"tiny precompiled region"}
DEVICE=${DEVICE:-cuda}
BENCH=${BENCH:-"--preset llama2-7b --dtype float16 --batch-size 4 --input-len 1024 --max-new-tokens 256"}
MODE_TIMEOUT=${MODE_TIMEOUT:-240}
TINY_SCOPES=${TINY_SCOPES:-"model region layers"}
TINY_MODES=${TINY_MODES:-eager,max-autotune,reduce-overhead}
SITE=${SITE:-/tmp/site}
REFERENCE=${REFERENCE:-/tmp/reference}
mkdir -p "$OUT" "$WORK"
log() { echo "[$(date +%T)] $*"; }

if [ ! -d "$SITE/transformers" ]; then
  log "installing into $SITE"
  [ "${UNINSTALL_TOKENIZERS:-1}" = 1 ] && "$PY" -m pip uninstall -y -q tokenizers 2>/dev/null
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$REFERENCE" "$WHEELS"/transformers-*.whl || exit 1
fi
export PYTHONPATH=$SITE
"$PY" -m patcher apply --static-cache || exit 1
"$PY" -m patcher status --json > "$WORK/status.json"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$WORK/gpu.csv" 2>/dev/null

for part in $PARTS; do
  case $part in
  tiny)
    log "tiny model on $DEVICE"
    common=(tests/workers/generate.py --kv-heads 2 --new-tokens 32 --device "$DEVICE")
    PYTHONPATH=$REFERENCE:$SITE "$PY" "${common[@]}" --modes reference > "$WORK/tiny-reference.json" 2> "$WORK/tiny-reference.log"
    export LLAMA_GRAPH_PATCH_STRICT=1  # a compile error fails the run, with its traceback in the log
    for scope in $TINY_SCOPES; do
      LLAMA_GRAPH_PATCH_COMPILE_SCOPE=$scope LLAMA_GRAPH_PATCH_STATIC_CACHE=0 "$PY" "${common[@]}" --modes "$TINY_MODES" \
        > "$WORK/tiny-growing-$scope.json" 2> "$WORK/tiny-growing-$scope.log"
      LLAMA_GRAPH_PATCH_COMPILE_SCOPE=$scope LLAMA_GRAPH_PATCH_STATIC_CACHE=1 "$PY" "${common[@]}" --modes "$TINY_MODES" \
        --forbid-recompiles > "$WORK/tiny-static-$scope.json" 2> "$WORK/tiny-static-$scope.log"
    done
    unset LLAMA_GRAPH_PATCH_STRICT
    "$PY" - "$WORK" "$TINY_SCOPES" <<'EOF' | tee "$OUT/tiny-summary.txt"
import json, sys
out = sys.argv[1]
tokens = lambda run: [call["tokens"] for call in run["calls"]]
reference = tokens(json.load(open(f"{out}/tiny-reference.json"))["reference"])
for name in (f"{cache}-{scope}" for scope in sys.argv[2].split() for cache in ("growing", "static")):
    try:
        results = json.load(open(f"{out}/tiny-{name}.json"))
    except (OSError, ValueError) as error:
        print(f"{name}: no result ({error}); see tiny-{name}.log")
        continue
    for mode, run in results.items():
        graphs = [call["graphs_per_step"][-1] for call in run["calls"]]
        print(f"{name}, {mode}: tokens identical to unpatched transformers: {tokens(run) == reference}; "
              f"graphs after each call: {graphs}; static cache: {run['static_cache']}; CUDA graphs: {run['cuda_graphs']}")
EOF
    ;;
  precompiled)
    log "tiny model on $DEVICE, stored ahead and then loaded"
    common=(tests/workers/generate.py --kv-heads 2 --new-tokens 32 --device "$DEVICE")
    [ -f "$WORK/tiny-reference.json" ] || PYTHONPATH=$REFERENCE:$SITE "$PY" "${common[@]}" --modes reference \
      > "$WORK/tiny-reference.json" 2> "$WORK/tiny-reference.log"
    for scope in model region; do
      for step in store load; do
        LLAMA_GRAPH_PATCH_CACHE="$WORK/precompiled-cache" LLAMA_GRAPH_PATCH_PRECOMPILE=$step \
          LLAMA_GRAPH_PATCH_COMPILE_SCOPE=$scope LLAMA_GRAPH_PATCH_STATIC_CACHE=0 "$PY" "${common[@]}" \
          --modes "${TINY_MODES#eager,}" > "$WORK/precompiled-$scope-$step.json" 2> "$WORK/precompiled-$scope-$step.log"
      done
    done
    "$PY" - "$WORK" <<'EOF' | tee "$OUT/precompiled-summary.txt"
import json, sys
out = sys.argv[1]
tokens = lambda run: [call["tokens"] for call in run["calls"]]
reference = tokens(json.load(open(f"{out}/tiny-reference.json"))["reference"])
for name in (f"{scope}-{step}" for scope in ("model", "region") for step in ("store", "load")):
    try:
        results = json.load(open(f"{out}/precompiled-{name}.json"))
    except (OSError, ValueError) as error:
        print(f"{name}: no result ({error}); see precompiled-{name}.log")
        continue
    for mode, run in results.items():
        graphs = [call["graphs_per_step"][-1] for call in run["calls"]]
        print(f"{name}, {mode}: tokens identical: {tokens(run) == reference}; cache: {run['compile_cache']['state']}; "
              f"graphs traced after each call: {graphs}; CUDA graphs: {run['cuda_graphs']}")
EOF
    ;;
  region | layers)
    log "bench, both caches, scope $part, each compiled mode with an empty compile cache (--cold)"
    # the report is rewritten after every mode: a call cut off by its time limit keeps the modes that ended;
    # the static cache's reduce-overhead (graph capture of the whole decode step) goes first
    s=@$part
    modes=${SCOPE_MODES:-eager,eager+static,reduce-overhead+static$s,max-autotune+static$s,reduce-overhead$s,max-autotune$s}
    TORCH_LOGS=recompiles "$PY" -m patcher bench $BENCH --modes "$modes" --cold --runs "${RUNS:-1}" \
      --mode-timeout "$MODE_TIMEOUT" --keep-logs "$WORK/bench-$part-workers" \
      --output-json "$OUT/bench-$part.json" --output-md "$OUT/bench-$part.md" 2> "$WORK/bench-$part.log"
    log "bench $part exit code $?"
    ;;
  static | growing | frozen)
    flag=""
    [ "$part" = static ] && flag="--static-cache"
    freeze=auto
    [ "$part" = frozen ] && freeze=1
    log "bench, $part cache"
    modes=eager,max-autotune,reduce-overhead
    [ "$part" = static ] && modes=eager,reduce-overhead,max-autotune  # the mode graph capture is for, first
    LLAMA_GRAPH_PATCH_FREEZE=$freeze "$PY" -m patcher bench $BENCH $flag --modes "$modes" --mode-timeout "$MODE_TIMEOUT" \
      --output-json "$OUT/bench-$part.json" --output-md "$OUT/bench-$part.md" 2> "$WORK/bench-$part.log"
    log "bench $part exit code $?"
    ;;
  esac
  cp -r /tmp/llama-graph-patch-bench-* "$WORK"/ 2>/dev/null  # worker logs of failed modes
  tar czf "$OUT/gpu-logs.tar.gz" -C "$WORK" .
done
log "done"
