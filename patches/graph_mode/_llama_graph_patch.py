"""How the graph-mode patch compiles the model and calls it inside transformers' generation loop.

Appended to transformers/generation/utils.py. The codemod copies every statement below this docstring.
Rules for the snippet files of this folder, checked by tests:
- import nothing from llama-graph-patch: a patched transformers must outlive the tool;
- import inside functions, so that nothing rebinds names the host module already uses (it binds
  `logging` to transformers' own logging module);
- parse with the Python 3.8 grammar and run on torch 2.1 through 2.14.
"""

# ---------------------------------------------------------------------------------------------------
# Added by llama-graph-patch (graph-mode patch); `llama-graph-patch revert` removes it.
# EXE_MODE=dynamo|eager, GRAPH_MODE=max-autotune|reduce-overhead, LLAMA_GRAPH_PATCH_COMPILE_SCOPE,
# LLAMA_GRAPH_PATCH_INDUCTOR_MODE, LLAMA_GRAPH_PATCH_MAX_GRAPHS, LLAMA_GRAPH_PATCH_STRICT:
# see the llama-graph-patch README.
# ---------------------------------------------------------------------------------------------------

# torchair's max-autotune compiles the whole graph ahead (GE); reduce-overhead captures it once and
# replays it (aclgraph). The inductor modes closest in meaning (on a CPU, reduce-overhead takes inductor's
# C++ wrapper instead, below):
_LLAMA_GRAPH_PATCH_INDUCTOR_MODES = {"max-autotune": "default", "reduce-overhead": "reduce-overhead"}
_LLAMA_GRAPH_PATCH_INDUCTOR_OVERRIDES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Prefill and decode take one graph each; batch size 1 two more (torch specialises sizes 0 and 1). Eight is
# also dynamo's own default limit of compiled versions per function.
_LLAMA_GRAPH_PATCH_DEFAULT_MAX_GRAPHS = 8


def _llama_graph_patch_setting(name, default, allowed):
    """The value of environment variable `name`; anything outside `allowed` is an error, not a fallback."""
    import os

    value = os.environ.get(name, default)
    if value not in allowed:
        raise ValueError(
            "llama-graph-patch: %s=%r is not allowed; use one of: %s" % (name, value, ", ".join(allowed))
        )
    return value


def _llama_graph_patch_count_setting(name, default):
    """A positive whole number from environment variable `name`."""
    import os

    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ValueError("llama-graph-patch: %s=%r is not allowed; use a whole number of 1 or more" % (name, value))
    return int(value)


def _llama_graph_patch_compile(model, input_ids):
    """What the generation loop calls as `self`: the model itself when EXE_MODE=eager, else a runner that
    calls the model compiled as GRAPH_MODE and LLAMA_GRAPH_PATCH_COMPILE_SCOPE ask, for the device
    `input_ids` live on."""
    import logging

    exe_mode = _llama_graph_patch_setting("EXE_MODE", "dynamo", ("dynamo", "eager"))
    graph_mode = _llama_graph_patch_setting("GRAPH_MODE", "max-autotune", ("max-autotune", "reduce-overhead"))
    scope = _llama_graph_patch_setting("LLAMA_GRAPH_PATCH_COMPILE_SCOPE", "model", ("model", "layers"))
    budget = _llama_graph_patch_count_setting("LLAMA_GRAPH_PATCH_MAX_GRAPHS", _LLAMA_GRAPH_PATCH_DEFAULT_MAX_GRAPHS)
    strict = _llama_graph_patch_setting("LLAMA_GRAPH_PATCH_STRICT", "0", ("0", "1")) == "1"
    logger = logging.getLogger("llama_graph_patch")
    device_type = input_ids.device.type
    if exe_mode == "eager":
        logger.info("llama-graph-patch: eager mode on %s (EXE_MODE=eager), no torch.compile", device_type)
        return model
    options, backend = _llama_graph_patch_backend(graph_mode, device_type)
    state = model.__dict__.setdefault(
        "_llama_graph_patch", {"compiled": {}, "caches": {}, "graphs": 0, "warned": False}
    )
    if scope == "layers" and _llama_graph_patch_layers_are_indexed(model):
        scope = "model"
        if not state.get("warned_scope"):
            state["warned_scope"] = True
            logger.warning(
                "llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers compiles the whole model instead: each "
                "decoder layer of %s indexes the shared KV cache with its own layer_idx (transformers 4.36 and "
                "later), so dynamo would compile every layer apart",
                type(model).__name__,
            )
    logger.info(
        "llama-graph-patch: dynamo mode %s on %s, backend=%s, scope=%s, dynamic=True, fullgraph=True",
        graph_mode,
        device_type,
        backend,
        scope,
    )
    # `state` is kept in __dict__ so that nn.Module does not register it: one compiled model and compile cache
    # per backend and scope (a fresh torchair backend object on every generate call would make dynamo compile
    # again), and the number of graphs compiled for this model.
    key = (backend, scope)
    if scope == "layers" and key in state["compiled"] and not state["compiled"][key].is_current():
        del state["compiled"][key]  # compile the layers the model holds now (dynamo reuses what fits)
    if key not in state["compiled"]:
        description = {
            "graph_mode": graph_mode,
            "backend": backend,
            "scope": scope,
            "kv_cache": _llama_graph_patch_kv_cache_kind(model),
        }
        cache = _llama_graph_patch_open_compile_cache(model, input_ids.device, description)
        state["caches"][key] = state["cache"] = cache  # "cache": the latest opened, for reports
        state["compiled"][key] = _llama_graph_patch_compiled_model(model, scope, options, device_type)
        # transformers 4.36 and 4.37 prepare Llama's SDPA attention mask with a branch on tensor values
        # (`torch.all(attention_mask == 1)`) that fullgraph tracing cannot follow: while a compiled call runs,
        # their LlamaModel prepares the mask the eager way instead and hands it to the same SDPA attention.
        state["sdpa_masks"] = [module for module in model.modules() if getattr(module, "_use_sdpa", False) is True]
    return _LlamaGraphPatchRunner(model, state["compiled"][key], state["caches"][key], state, budget, strict)


def _llama_graph_patch_kv_cache_kind(model):
    """"static" where the static-cache patch hands this model its fixed-size cache, else "growing". Their
    graphs differ, so the compile cache keeps them in separate files rather than one replacing the other."""
    if getattr(model, "llama_graph_patch_static_cache", None) is None:
        return "growing"
    enabled = _llama_graph_patch_setting("LLAMA_GRAPH_PATCH_STATIC_CACHE", "1", ("1", "0"))
    return "static" if enabled == "1" else "growing"


def _llama_graph_patch_runs_eager(model, method):
    """At the start of a decoding method the patch does not compile: under EXE_MODE=dynamo, say that this
    generate call runs eager. Never silently eager."""
    import logging

    if _llama_graph_patch_setting("EXE_MODE", "dynamo", ("dynamo", "eager")) == "dynamo":
        logging.getLogger("llama_graph_patch").warning(
            "llama-graph-patch: %s runs eager: the graph-mode patch compiles greedy search, sampling and the beam "
            "searches, not %s (see the llama-graph-patch README)",
            method,
            method,
        )


def _llama_graph_patch_backend(graph_mode, device_type):
    """torch.compile's backend options for GRAPH_MODE on this device, and how to name them in logs."""
    import os

    import torch

    if device_type == "npu":
        return {"backend": _llama_graph_patch_torchair_backend(graph_mode)}, "torchair (%s)" % graph_mode
    if (
        device_type == "cpu"
        and graph_mode == "reduce-overhead"
        and "LLAMA_GRAPH_PATCH_INDUCTOR_MODE" not in os.environ
        and not _llama_graph_patch_torch_older_than(torch.__version__, (2, 5))
    ):
        # A CPU has no graphs to capture; the per-step host overhead that capture removes on a device is,
        # on a CPU, Python launching each kernel. Inductor's C++ wrapper launches them from compiled code.
        return {"backend": "inductor", "options": {"cpp_wrapper": True}}, "inductor (mode=default, cpp_wrapper=True)"
    inductor_mode = _llama_graph_patch_setting(
        "LLAMA_GRAPH_PATCH_INDUCTOR_MODE",
        _LLAMA_GRAPH_PATCH_INDUCTOR_MODES[graph_mode],
        _LLAMA_GRAPH_PATCH_INDUCTOR_OVERRIDES,
    )
    return {"backend": "inductor", "mode": inductor_mode}, "inductor (mode=%s)" % inductor_mode


def _llama_graph_patch_torchair_backend(graph_mode):
    """The torchair backend exactly as the Ascend guide configures it."""
    import torch

    try:
        import torchair
        from torchair.configs.compiler_config import CompilerConfig
    except ImportError as error:
        raise ImportError(
            "llama-graph-patch: the model is on an NPU and EXE_MODE=dynamo needs torchair, which could not be "
            "imported (%s). Install torchair for your torch_npu (https://gitee.com/ascend/torchair) or run with "
            "EXE_MODE=eager." % error
        ) from error
    config = CompilerConfig()
    if graph_mode == "reduce-overhead":
        config.mode = "reduce-overhead"
        if _llama_graph_patch_torch_older_than(torch.__version__, (2, 5)):
            # torch < 2.5 can fail in the reinplace_inplaceable_ops pass (the guide's workaround).
            config.debug.aclgraph.disable_reinplace_inplaceable_ops_pass = True
    config.experimental_config.frozen_parameter = True
    return torchair.get_npu_backend(compiler_config=config)


def _llama_graph_patch_torch_older_than(version, major_minor):
    """Compare "2.1.0+cpu"-style versions without packaging, which the target may lack."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
    return tuple(parts) < tuple(major_minor)


def _llama_graph_patch_compiled_model(model, scope, options, device_type):
    """scope "model": the whole forward in one graph per call pattern (the guide's way). scope "layers":
    the decoder layer compiled once, its code serving every layer; embedding, mask, final norm and
    lm_head stay eager."""
    import torch

    def compile_module(module):
        return torch.compile(module, dynamic=True, fullgraph=True, **options)

    if scope == "model":
        return compile_module(model)
    if device_type == "cuda" and options.get("mode") in ("reduce-overhead", "max-autotune"):
        return _LlamaGraphPatchCompiledLayers(model, lambda layer: _LlamaGraphPatchPoolCopies(compile_module(layer)))
    return _LlamaGraphPatchCompiledLayers(model, compile_module)


class _LlamaGraphPatchPoolCopies(object):
    """A decoder layer compiled with CUDA graphs. Every compiled call starts a new generation of inductor's
    cudagraph trees, so the next layer's replay of the same graph would overwrite this layer's outputs
    (its hidden states and keys and values) in the graph pool: copy them out, keep what aliases an input."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        import torch
        from torch.utils import _pytree

        inputs = {leaf.data_ptr() for leaf in _pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        return _pytree.tree_map(
            lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) and leaf.data_ptr() not in inputs else leaf,
            self.compiled(*args, **kwargs),
        )


def _llama_graph_patch_layers_are_indexed(model):
    """Whether the model's layers hold their own index (`layer_idx`, transformers 4.36 and later): dynamo then
    specialises on it, and the code compiled for one layer cannot serve the others."""
    indices = {getattr(module, "layer_idx", None) for module in model.modules()}
    return len(indices - {None}) > 1  # walks the modules: a generate call's cost, not a step's


class _LlamaGraphPatchCompiledLayers(object):
    """Calls `model` with its decoder layers (its one nn.ModuleList) swapped for compiled ones while the call
    runs. Since dynamo takes a layer's weights as inputs, the code compiled for one layer serves them all."""

    def __init__(self, model, compile_layer):
        import torch

        paths = [name for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]
        if len(paths) != 1:
            raise ValueError(
                "llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers needs a model with one list of decoder "
                "layers; %s has %d (%s). Use LLAMA_GRAPH_PATCH_COMPILE_SCOPE=model"
                % (type(model).__name__, len(paths), ", ".join(paths) or "none")
            )
        self.model = model
        self.path = paths[0]
        self.layers = model.get_submodule(self.path)
        self.originals = dict(self.layers._modules)  # what was compiled: a replaced layer shows against it
        self.compiled = {name: compile_layer(layer) for name, layer in self.originals.items()}

    def is_current(self):
        """False once the model holds other layers than those compiled (a layer or the list replaced)."""
        return self.model.get_submodule(self.path) is self.layers and self.layers._modules == self.originals

    def __call__(self, *args, **kwargs):
        held = self.layers.__dict__["_modules"]
        self.layers.__dict__["_modules"] = self.compiled
        try:
            return self.model(*args, **kwargs)
        finally:
            self.layers.__dict__["_modules"] = held


class _LlamaGraphPatchRunner(object):
    """The model as one generation loop sees it: attributes are the model's, calls run the compiled model.

    A call that torch does not compile (dynamo's recompile limit, LLAMA_GRAPH_PATCH_MAX_GRAPHS, any
    compile error) runs eager instead, and so does the rest of this generate call: the same tokens, one
    WARNING per model. LLAMA_GRAPH_PATCH_STRICT=1 raises instead.
    """

    def __init__(self, model, compiled, cache, state, budget, strict):
        self.__model = model
        self.__compiled = compiled
        self.__cache = cache
        self.__state = state
        self.__budget = budget
        self.__strict = strict
        self.__eager = False
        self.__first = True
        self.__new_graphs = 0  # compiled during this generate call

    def __getattr__(self, name):
        return getattr(self.__model, name)

    def __call__(self, *args, **kwargs):
        import torch

        if self.__eager:
            return self.__model(*args, **kwargs)
        stats = _llama_graph_patch_dynamo_stats()
        before = stats["unique_graphs"]
        try:
            if torch.is_inference_mode_enabled():
                # Tensors made under inference_mode carry other dispatch keys than those made under no_grad,
                # and dynamo would compile apart for them (pipeline() generates under inference_mode).
                with torch.inference_mode(False), torch.no_grad():
                    outputs = self.__call_compiled(*_llama_graph_patch_model_inputs(args, kwargs, ordinary=True))
            else:
                outputs = self.__call_compiled(*_llama_graph_patch_model_inputs(args, kwargs, ordinary=False))
        except Exception as error:
            if self.__strict:
                raise
            self.__fall_back(error)
            return self.__model(*args, **kwargs)
        finally:
            compiled = stats["unique_graphs"] - before
            self.__new_graphs += compiled
            self.__state["graphs"] += compiled
        if self.__first:
            # The prefill graph hands out keys and values in another memory layout than decode steps do;
            # without this copy the second decode step would compile a third graph for it.
            _llama_graph_patch_contiguous_cache(outputs)
            self.__first = False
        return outputs

    def llama_graph_patch_finish(self):
        """After the generation loop: keep what this call compiled in the compile cache."""
        if self.__new_graphs and self.__cache is not None:
            _llama_graph_patch_save_compile_cache(self.__cache)

    def __call_compiled(self, args, kwargs):
        for module in self.__state["sdpa_masks"]:
            module._use_sdpa = False
        try:
            return self.__call_within_budget(args, kwargs)
        finally:
            for module in self.__state["sdpa_masks"]:
                module._use_sdpa = True

    def __call_within_budget(self, args, kwargs):
        import torch

        if self.__state["graphs"] < self.__budget:
            return self.__compiled(*args, **kwargs)
        if not hasattr(torch.compiler, "set_stance"):  # torch < 2.6: no way to run compiled without compiling
            raise RuntimeError("no graphs compiled beyond LLAMA_GRAPH_PATCH_MAX_GRAPHS on torch < 2.6")
        with torch.compiler.set_stance("fail_on_recompile"):  # the graphs it has, no new one
            return self.__compiled(*args, **kwargs)

    def __fall_back(self, error):
        import logging

        import torch

        self.__eager = True
        name = type(self.__model).__name__
        graphs = self.__state["graphs"]
        if graphs >= self.__budget:
            cause = "it holds %d compiled graphs, LLAMA_GRAPH_PATCH_MAX_GRAPHS=%d" % (graphs, self.__budget)
            fix = "raise LLAMA_GRAPH_PATCH_MAX_GRAPHS to compile more call patterns"
        elif "recompile" in type(error).__name__.lower() or "recompile_limit" in str(error):
            limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
            cause = "dynamo holds its limit of %d compiled versions (torch._dynamo.config.recompile_limit)" % limit
            fix = "raise torch._dynamo.config.recompile_limit, or vary batch sizes and modes less"
        else:
            first_line = (str(error).strip().splitlines() or [""])[0]
            cause = "torch.compile failed: %s: %s" % (type(error).__name__, first_line)
            fix = "set LLAMA_GRAPH_PATCH_STRICT=1 to raise the error, or EXE_MODE=eager"
        message = "llama-graph-patch: %s runs eager for the rest of this generate call: %s; %s" % (name, cause, fix)
        logger = logging.getLogger("llama_graph_patch")
        if self.__state["warned"]:
            logger.info(message)
        else:
            self.__state["warned"] = True
            logger.warning(message)


def _llama_graph_patch_dynamo_stats():
    """dynamo's running totals, unique_graphs among them: the graphs compiled so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]


def _llama_graph_patch_model_inputs(args, kwargs, ordinary):
    """The model call's arguments as the compiled model should see them, to keep its guards few.

    A top-level tensor that is a view (decode steps feed `input_ids[:, -1:]`) becomes a compact copy:
    dynamo guards on views, their strides and storage offsets, and for a batch of one those change every
    step. With
    `ordinary`, every inference tensor, also inside past_key_values, becomes an ordinary copy; call it
    outside inference mode then.
    """
    import torch

    def top(value):
        if isinstance(value, torch.Tensor):
            if value._base is not None or not value.is_contiguous() or (ordinary and value.is_inference()):
                return value.clone(memory_format=torch.contiguous_format)
            return value
        return _llama_graph_patch_ordinary(value) if ordinary else value

    return tuple(top(value) for value in args), {name: top(value) for name, value in kwargs.items()}


def _llama_graph_patch_ordinary(value):
    """`value` with every inference tensor in it (also inside tuples, lists and dicts) replaced by an
    ordinary copy. Call outside inference mode."""
    import torch
    from torch.utils import _pytree

    return _pytree.tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) and leaf.is_inference() else leaf, value
    )


def _llama_graph_patch_contiguous_cache(outputs):
    """Make the keys and values in `outputs.past_key_values` contiguous, as decode steps hand them out."""
    past = getattr(outputs, "past_key_values", None)
    if isinstance(past, tuple):
        outputs["past_key_values"] = tuple(tuple(tensor.contiguous() for tensor in layer) for layer in past)
    elif hasattr(past, "key_cache"):  # transformers' Cache objects (4.36 and later)
        past.key_cache[:] = [tensor.contiguous() for tensor in past.key_cache]
        past.value_cache[:] = [tensor.contiguous() for tensor in past.value_cache]


def _llama_graph_patch_finish(model, timer):
    """After the generation loop: write the step timing, and save compile artifacts if this call compiled."""
    if timer is not None:
        timer.write()
    if isinstance(model, _LlamaGraphPatchRunner):
        model.llama_graph_patch_finish()
