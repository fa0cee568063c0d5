"""Graph mode for transformers' decoding methods: installed by llama-graph-patch as the package
transformers/generation/_llama_graph_patch/, and removed by `llama-graph-patch revert`.

This module holds the hooks that the patched decoding methods of generation/utils.py call, and nothing else:

    self = _llama_graph_patch.compile_for_generation(self, input_ids)            before the generation loop
    _llama_graph_patch_timer = _llama_graph_patch.step_timer(self, input_ids, "sample")
    _llama_graph_patch_timer.start() / .stop(model_inputs)                      around the forward call
    _llama_graph_patch.finish(self, _llama_graph_patch_timer)                   after the loop

The rest, a module per job:

    settings.py        every run-time switch, read once per generate call (EXE_MODE, GRAPH_MODE, ...)
    state.py           what the patch keeps on each model, and describe(model), its one public view
    runner.py          the model as the generation loop sees it: compiled, falling back to eager
    compiling.py       what a generate call runs compiled, built once per model, backend and scope
    backends.py        torchair on an NPU, inductor on cuda and cpu, and their options
    frozen.py          frozen weights on inductor: where, when, and what a change of the weights does
    gemv.py            one-row decode on a CPU: matrix-vector products as inductor's own reductions
    scopes.py          scope "layers", and the decoder-layer swap every scope but "model" uses
    regions.py         scope "region": the decoder layer traced once inside the whole-model graph
    calls.py           what the compiled model is fed and hands back: views, inference tensors, phases
    compile_cache.py   the compile cache in the tool's cache folder: keys, torch's artifacts
    precompiled.py     code compiled ahead and stored there, called without tracing
    torchair_cache.py  torchair's cache_compile on an NPU
    files.py           the compile cache's files: trust, whole writes under a lock, checked reads
    kv_cache.py        the static KV cache a generate call gets, where the static-cache patch installed it
    timing.py          device-synchronized step timing (LLAMA_GRAPH_PATCH_TIMING)

It is copied byte for byte from llama-graph-patch's patches/ folder and imports nothing from the tool, so
a patched transformers keeps working after the tool is uninstalled. It parses with the Python 3.8 grammar
and runs on torch 2.1 through 2.14.
"""

import logging

from .compiling import compiled_for
from .kv_cache import kv_cache_kind, with_static_kv_cache
from .runner import Generation, Runner
from .settings import read_settings
from .state import state_of
from .timing import StepTimer

logger = logging.getLogger("llama_graph_patch")


def compile_for_generation(model, input_ids):
    """What the generation loop calls as `self`: a Runner that calls the model compiled as the settings ask
    (EXE_MODE=dynamo) for the device `input_ids` live on, or the model itself (EXE_MODE=eager). It carries
    the settings, read here once for the whole generate call, to the hooks after it."""
    settings = read_settings()
    state = state_of(model)
    state.device = input_ids.device
    if settings.exe_mode == "eager":
        logger.info("llama-graph-patch: eager mode on %s (EXE_MODE=eager), no torch.compile", input_ids.device.type)
        state.latest = None
    else:
        state.latest = compiled_for(model, state, settings, input_ids.device)
    return Runner(Generation(model, state, settings), state.latest)


def step_timer(runner, input_ids, method):
    """A timer for every forward step when LLAMA_GRAPH_PATCH_TIMING names a file, else None. With it unset
    the generation loop pays two `is not None` checks per step and nothing else."""
    path = generation_of(runner, "step_timer").settings.timing
    return StepTimer(path, input_ids.device, input_ids.shape[0], method) if path else None


def finish(runner, timer):
    """After the generation loop: write the step timing, and keep what this call compiled."""
    if timer is not None:
        timer.write()
    generation_of(runner, "finish")
    runner.llama_graph_patch_finish()


def runs_eager(model, method):
    """At the start of a decoding method the patch does not compile: under EXE_MODE=dynamo, say that this
    generate call runs eager. Never silently eager."""
    if read_settings().exe_mode == "dynamo":
        logger.warning(
            "llama-graph-patch: %s runs eager: the graph-mode patch compiles greedy search, sampling and the beam "
            "searches, not %s (see the llama-graph-patch README)",
            method,
            method,
        )


def with_static_cache(runner, input_ids, stopping_criteria, model_kwargs):
    """The static-cache patch's hook in greedy search and sampling: a static KV cache of prompt + new tokens
    for this generate call, where the model offers one (the patched LlamaForCausalLM does)."""
    generation = generation_of(runner, "with_static_cache")
    return with_static_kv_cache(
        generation.model, generation.state, generation.settings, input_ids, stopping_criteria.max_length, model_kwargs
    )


def without_static_cache(runner, method):
    """The static-cache patch's hook in the beam searches, which reorder the KV cache every step: where the
    static KV cache would have served this call, say that it does not."""
    generation = generation_of(runner, "without_static_cache")
    if kv_cache_kind(generation.model, generation.settings) == "static":
        logger.warning(
            "llama-graph-patch: no static KV cache for %s: beams reorder the cache every step; this call uses "
            "transformers' growing cache",
            method,
        )


def generation_of(runner, hook):
    """The generate call a Runner runs. Every hook after compile_for_generation is handed its Runner: the
    patched method's lines run in the order the patches listed them."""
    if not isinstance(runner, Runner):
        raise TypeError(
            "llama-graph-patch: %s was handed a %s, not the runner compile_for_generation returns: the patched "
            "decoding method calls its hooks out of order; `llama-graph-patch revert`, then apply again"
            % (hook, type(runner).__name__)
        )
    return runner.llama_graph_patch
