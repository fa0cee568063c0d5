"""Graph mode for transformers' decoding methods: installed by llama-graph-patch as
transformers/generation/_llama_graph_patch.py, and removed by `llama-graph-patch revert`.

The decoding methods of generation/utils.py call into this module from a few hook lines:

    self = _llama_graph_patch.compile_for_generation(self, input_ids)    before the generation loop
    _llama_graph_patch_timer.start() / .stop(model_inputs)              around the forward call
    _llama_graph_patch.finish(self, _llama_graph_patch_timer)           after the loop

It is copied byte for byte from llama-graph-patch's patches/ folder and imports nothing from the tool, so
a patched transformers keeps working after the tool is uninstalled. It parses with the Python 3.8 grammar
and runs on torch 2.1 through 2.14.

Run-time switches (see the llama-graph-patch README): EXE_MODE=dynamo|eager,
GRAPH_MODE=max-autotune|reduce-overhead, LLAMA_GRAPH_PATCH_COMPILE_SCOPE=model|layers|region,
LLAMA_GRAPH_PATCH_INDUCTOR_MODE, LLAMA_GRAPH_PATCH_MAX_GRAPHS, LLAMA_GRAPH_PATCH_STRICT,
LLAMA_GRAPH_PATCH_TIMING=PATH, LLAMA_GRAPH_PATCH_CACHE=DIR, LLAMA_GRAPH_PATCH_COMPILE_CACHE=1|0,
LLAMA_GRAPH_PATCH_PRECOMPILE=load|store|off and LLAMA_GRAPH_PATCH_STATIC_CACHE=1|0. The compile cache lives
in _llama_graph_patch_cache.py.
"""

import inspect
import json
import logging
import os
import time

import torch
from torch.utils import _pytree

from . import _llama_graph_patch_cache as compile_cache

logger = logging.getLogger("llama_graph_patch")

# torchair's max-autotune compiles the whole graph ahead (GE); reduce-overhead captures it once and
# replays it (aclgraph). The inductor modes closest in meaning (on a CPU, reduce-overhead takes inductor's
# C++ wrapper instead, see backend_options):
INDUCTOR_MODES = {"max-autotune": "default", "reduce-overhead": "reduce-overhead"}
INDUCTOR_OVERRIDES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Prefill and decode take one graph each; batch size 1 two more (torch specialises sizes 0 and 1). Eight is
# also dynamo's own default limit of compiled versions per function.
DEFAULT_MAX_GRAPHS = 8
SCOPES = ("model", "layers", "region")
# The oldest torch whose nested_compile_region this patch was seen to trace a Llama layer with (2.13.0);
# older releases have the function, but their reuse of a traced region is not known to hold here.
REGION_TORCH = (2, 13)


# -- settings -------------------------------------------------------------------------------------------


def setting(name, default, allowed):
    """The value of environment variable `name`; anything outside `allowed` is an error, not a fallback."""
    value = os.environ.get(name, default)
    if value not in allowed:
        raise ValueError(
            "llama-graph-patch: %s=%r is not allowed; use one of: %s" % (name, value, ", ".join(allowed))
        )
    return value


def count_setting(name, default):
    """A positive whole number from environment variable `name`."""
    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ValueError("llama-graph-patch: %s=%r is not allowed; use a whole number of 1 or more" % (name, value))
    return int(value)


def exe_mode():
    return setting("EXE_MODE", "dynamo", ("dynamo", "eager"))


def kv_cache_kind(model):
    """"static" where the static-cache patch hands this model its fixed-size cache, else "growing". Their
    graphs differ, so the compile cache keeps them in separate files rather than one replacing the other."""
    if getattr(model, "llama_graph_patch_static_cache", None) is None:
        return "growing"
    return "static" if setting("LLAMA_GRAPH_PATCH_STATIC_CACHE", "1", ("1", "0")) == "1" else "growing"


# -- the hooks the decoding methods call ------------------------------------------------------------------


def compile_for_generation(model, input_ids):
    """What the generation loop calls as `self`: the model itself when EXE_MODE=eager, else a runner that
    calls the model compiled as GRAPH_MODE and LLAMA_GRAPH_PATCH_COMPILE_SCOPE ask, for the device
    `input_ids` live on."""
    mode = exe_mode()
    graph_mode = setting("GRAPH_MODE", "max-autotune", ("max-autotune", "reduce-overhead"))
    scope = setting("LLAMA_GRAPH_PATCH_COMPILE_SCOPE", "model", SCOPES)
    budget = count_setting("LLAMA_GRAPH_PATCH_MAX_GRAPHS", DEFAULT_MAX_GRAPHS)
    strict = setting("LLAMA_GRAPH_PATCH_STRICT", "0", ("0", "1")) == "1"
    device_type = input_ids.device.type
    if mode == "eager":
        logger.info("llama-graph-patch: eager mode on %s (EXE_MODE=eager), no torch.compile", device_type)
        return model
    if scope == "region":
        reason = region_unsupported(model, device_type)
        if reason is not None:
            scope = "model"
            logger.info("llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=region compiles the whole model: %s", reason)
    options, backend = backend_options(graph_mode, device_type, scope, sharded=compile_cache.tensor_parallel()[0] > 1)
    # Kept in __dict__ so that nn.Module does not register it: one compiled model and compile cache per
    # backend and scope (a fresh torchair backend object on every generate call would make dynamo compile
    # again), and the number of graphs compiled for this model.
    state = model.__dict__.setdefault("_llama_graph_patch", PatchState(compiled={}, caches={}, graphs=0, warned=False))
    if scope == "layers" and layers_are_indexed(model):
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
    key = (backend, scope)
    if scope != "model" and key in state["compiled"] and not state["compiled"][key].is_current():
        del state["compiled"][key]  # compile the layers the model holds now (dynamo reuses what fits)
    if key not in state["compiled"]:
        description = {"graph_mode": graph_mode, "backend": backend, "scope": scope, "kv_cache": kv_cache_kind(model)}
        cache = None
        use_cache = setting("LLAMA_GRAPH_PATCH_COMPILE_CACHE", "1", ("1", "0")) == "1"
        if use_cache and device_type != "npu":
            # (not on an NPU: torchair compiles through GE, which torch's caches do not hold)
            cache = compile_cache.open_compile_cache(model, input_ids.device, description)
        state["caches"][key] = state["cache"] = cache  # "cache": the latest opened, for reports
        ahead = ahead_of_time(model, use_cache, cache, scope, input_ids.device, description)
        state["compiled"][key] = compiled_model(model, scope, options, device_type, ahead)
        # transformers 4.36 and 4.37 prepare Llama's SDPA attention mask with a branch on tensor values
        # (`torch.all(attention_mask == 1)`) that fullgraph tracing cannot follow: while a compiled call runs,
        # their LlamaModel prepares the mask the eager way instead and hands it to the same SDPA attention.
        state["sdpa_masks"] = [module for module in model.modules() if getattr(module, "_use_sdpa", False) is True]
    return Runner(model, state["compiled"][key], state["caches"][key], state, budget, strict)


def ahead_of_time(model, use_cache, cache, scope, device, description):
    """How to get compiled code without tracing, if at all: precompiled code from the compile cache
    (LLAMA_GRAPH_PATCH_PRECOMPILE=load, the default, or store), for the scopes that compile one whole-model
    graph; on an NPU, torchair's cache_compile where the installed torchair has it."""
    precompile = setting("LLAMA_GRAPH_PATCH_PRECOMPILE", "load", ("load", "store", "off"))
    if precompile == "off" or scope == "layers":
        return None
    if device.type == "npu":
        if not use_cache or not compile_cache.torchair_caches():
            return None
        key = compile_cache.compile_key(model, device, description)
        return {"torchair": torchair_config(description["graph_mode"]), "key": key}
    if cache is None or not compile_cache.can_precompile(device):
        return None
    return {"key": cache["key"], "store": precompile == "store", "cache": cache}


class PatchState(dict):
    """What the patch keeps on a model. A class of its own, not a plain dict: precompiling pickles the model's
    attributes but this one, which it can leave out only when it is not a built-in dict (torch 2.13)."""


def runs_eager(model, method):
    """At the start of a decoding method the patch does not compile: under EXE_MODE=dynamo, say that this
    generate call runs eager. Never silently eager."""
    if exe_mode() == "dynamo":
        logger.warning(
            "llama-graph-patch: %s runs eager: the graph-mode patch compiles greedy search, sampling and the beam "
            "searches, not %s (see the llama-graph-patch README)",
            method,
            method,
        )


def step_timer(input_ids, method):
    """A timer for every forward step when LLAMA_GRAPH_PATCH_TIMING names a file, else None. With it unset
    the generation loop pays two `is not None` checks per step and nothing else."""
    path = os.environ.get("LLAMA_GRAPH_PATCH_TIMING")
    if not path:
        return None
    return StepTimer(path, input_ids.device, input_ids.shape[0], method)


def finish(model, timer):
    """After the generation loop: write the step timing, and save compile artifacts if this call compiled."""
    if timer is not None:
        timer.write()
    if isinstance(model, Runner):
        model.llama_graph_patch_finish()


def with_static_cache(model, input_ids, stopping_criteria, model_kwargs):
    """The static-cache patch's hook in greedy search and sampling: give this generate call a KV cache of
    fixed size (prompt + new tokens) if the model offers one. Nothing here knows Llama: a model takes part
    by offering a `llama_graph_patch_static_cache` method (the patched LlamaForCausalLM does)."""
    allocate = getattr(model, "llama_graph_patch_static_cache", None)
    if kv_cache_kind(model) != "static" or allocate is None or not model_kwargs.get("use_cache", True):
        return model_kwargs
    max_length = stopping_criteria.max_length
    if max_length is None or model_kwargs.get("past_key_values") is not None or "inputs_embeds" in model_kwargs:
        logger.warning("llama-graph-patch: no static KV cache: it needs max_length and starts from input_ids alone")
        return model_kwargs
    cache = allocate(input_ids.shape[0], max_length, input_ids.device)
    if cache is None:
        return model_kwargs
    logger.info("llama-graph-patch: static KV cache %s", cache)
    model_kwargs = dict(model_kwargs)
    model_kwargs["llama_graph_patch_cache"] = cache
    return model_kwargs


def without_static_cache(model, method):
    """The static-cache patch's hook in the beam searches, which reorder the KV cache every step: if the
    static cache would have served this call, say that it does not."""
    if kv_cache_kind(model) == "static":
        logger.warning(
            "llama-graph-patch: no static KV cache for %s: beams reorder the cache every step; this call uses "
            "transformers' growing cache",
            method,
        )


# -- how to compile -------------------------------------------------------------------------------------


def backend_options(graph_mode, device_type, scope="model", sharded=False):
    """torch.compile's backend options for GRAPH_MODE on this device, and how to name them in logs.
    `sharded`: the model is split over several ranks (tensor parallel)."""
    if device_type == "npu":
        if sharded:
            collectives_for_torchair()
        return {"backend": torchair_backend(graph_mode)}, "torchair (%s)" % graph_mode
    if (
        device_type == "cpu"
        and graph_mode == "reduce-overhead"
        and "LLAMA_GRAPH_PATCH_INDUCTOR_MODE" not in os.environ
        and not torch_older_than(torch.__version__, (2, 5))
        and scope != "region"  # the C++ wrapper has no code for invoke_subgraph (torch 2.13, 2.14)
        # nor for a sharded model's graph, which takes its DeviceMesh as an input (`TypeError: object of type
        # 'DeviceMesh' has no len()` on every call, torch 2.13)
        and not sharded
    ):
        # A CPU has no graphs to capture; the per-step host overhead that capture removes on a device is,
        # on a CPU, Python launching each kernel. Inductor's C++ wrapper launches them from compiled code.
        return {"backend": "inductor", "options": {"cpp_wrapper": True}}, "inductor (mode=default, cpp_wrapper=True)"
    inductor_mode = setting("LLAMA_GRAPH_PATCH_INDUCTOR_MODE", INDUCTOR_MODES[graph_mode], INDUCTOR_OVERRIDES)
    return {"backend": "inductor", "mode": inductor_mode}, "inductor (mode=%s)" % inductor_mode


def collectives_for_torchair():
    """torchair converts torch's traceable collectives (what a sharded model's graph holds) from torch 2.3.1
    on; before that its patch_for_hcom makes torch.distributed's collectives enter the graph (torchair's
    guide, "collective communication in the graph")."""
    if torch_older_than(torch.__version__, (2, 3, 1)):
        import torchair

        torchair.patch_for_hcom()


def torchair_backend(graph_mode):
    """The torchair backend exactly as the Ascend guide configures it."""
    config = torchair_config(graph_mode)  # first: it says what to do where torchair is missing
    import torchair

    return torchair.get_npu_backend(compiler_config=config)


def torchair_config(graph_mode):
    """torchair's CompilerConfig as the Ascend guide sets it for GRAPH_MODE."""
    try:
        # Only on an NPU: torchair is not on PyPI, and elsewhere it is absent.
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
        if torch_older_than(torch.__version__, (2, 5)):
            # torch < 2.5 can fail in the reinplace_inplaceable_ops pass (the guide's workaround).
            config.debug.aclgraph.disable_reinplace_inplaceable_ops_pass = True
    config.experimental_config.frozen_parameter = True
    return config


def torch_older_than(version, major_minor):
    """Compare "2.1.0+cpu"-style versions without packaging, which the target may lack; `major_minor` may
    name a patch release too."""
    parts = []
    for piece in version.split(".")[: len(major_minor)]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
    return tuple(parts) < tuple(major_minor)


def compiled_model(model, scope, options, device_type, ahead=None):
    """scope "model": the whole forward in one graph per call pattern (the guide's way). scope "region": the
    same whole-model graph, in which the decoder layer is traced once and every layer reuses it. scope
    "layers": the decoder layer compiled once, its code serving every layer; embedding, mask, final norm and
    lm_head stay eager. With `ahead` (see ahead_of_time), the whole-model graphs come precompiled where
    the compile cache has them."""

    def compile_module(module):
        return torch.compile(module, dynamic=True, fullgraph=True, **options)

    if ahead is not None and "torchair" in ahead:  # an NPU: scope "model" (see region_unsupported)
        return compile_cache.TorchairPhases(model, ahead["torchair"], ahead["key"])
    if scope in ("model", "region"):
        whole = compile_module(model)
        if ahead is not None:
            whole = compile_cache.Precompiled(model, ahead["key"], options, whole, ahead["store"], ahead["cache"])
        return whole if scope == "model" else Regions(model, whole)
    if device_type == "cuda" and options.get("mode") in ("reduce-overhead", "max-autotune"):
        return CompiledLayers(model, lambda layer: PoolCopies(compile_module(layer)))
    return CompiledLayers(model, compile_module)


class PoolCopies(object):
    """A decoder layer compiled with CUDA graphs. Every compiled call starts a new generation of inductor's
    cudagraph trees, so the next layer's replay of the same graph would overwrite this layer's outputs
    (its hidden states and keys and values) in the graph pool: copy them out, keep what aliases an input."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        inputs = {leaf.data_ptr() for leaf in _pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        return _pytree.tree_map(
            lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) and leaf.data_ptr() not in inputs else leaf,
            self.compiled(*args, **kwargs),
        )


def layers_are_indexed(model):
    """Whether the model's layers hold their own index (`layer_idx`, transformers 4.36 and later): dynamo then
    specialises on it, and the code compiled for one layer cannot serve the others."""
    indices = {getattr(module, "layer_idx", None) for module in model.modules()}
    return len(indices - {None}) > 1  # walks the modules: a generate call's cost, not a step's


def module_lists(model):
    """The paths of the model's nn.ModuleLists: a Llama has one, its decoder layers."""
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]


class CompiledLayers(object):
    """Calls `model` with its decoder layers (its one nn.ModuleList) swapped for `replace(layer)` while the
    call runs, by default the layers compiled. Since dynamo takes a layer's weights as inputs, the code
    compiled for one layer serves them all. `call`: what to call instead of the model itself."""

    def __init__(self, model, replace, call=None):
        paths = module_lists(model)
        if len(paths) != 1:
            raise ValueError(
                "llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers needs a model with one list of decoder "
                "layers; %s has %d (%s). Use LLAMA_GRAPH_PATCH_COMPILE_SCOPE=model"
                % (type(model).__name__, len(paths), ", ".join(paths) or "none")
            )
        self.model = model
        self.path = paths[0]
        self.call = model if call is None else call
        self.layers = model.get_submodule(self.path)
        self.originals = dict(self.layers._modules)  # what was compiled: a replaced layer shows against it
        self.compiled = {name: replace(layer) for name, layer in self.originals.items()}

    def is_current(self):
        """False once the model holds other layers than those compiled (a layer or the list replaced)."""
        return self.model.get_submodule(self.path) is self.layers and self.layers._modules == self.originals

    def __call__(self, *args, **kwargs):
        held = self.layers.__dict__["_modules"]
        self.layers.__dict__["_modules"] = self.compiled
        try:
            return self.call(*args, **kwargs)
        finally:
            self.layers.__dict__["_modules"] = held


# -- scope "region": one whole-model graph, the decoder layer traced once ------------------------------------
#
# torch.compiler.nested_compile_region traces a function once and reuses the traced subgraph wherever it is
# called again with inputs of the same kinds (torch/_dynamo/variables/invoke_subgraph.py, is_reuse_eligible):
# tensors, constants and modules in; a tensor or a flat tuple of tensors out, none aliasing an input; no side
# effects on objects from outside. A transformers decoder layer meets none of that by itself (it takes and
# returns its KV cache as a tuple or a Cache object), so each layer is called through a small module that
# hands the region plain tensors and puts the region's keys and values back where the model expects them.


def region_unsupported(model, device_type):
    """Why scope "region" cannot serve `model` here, or None if it can."""
    if torch_older_than(torch.__version__, REGION_TORCH) or not hasattr(torch.compiler, "nested_compile_region"):
        return "torch %s is older than %d.%d, the oldest torch it was tested with" % ((torch.__version__,) + REGION_TORCH)
    if device_type == "npu":
        return "torchair's graph conversion of invoke_subgraph, the region's higher-order op, is not tested here"
    paths = module_lists(model)
    if len(paths) != 1:
        return "%s has no single list of decoder layers" % type(model).__name__
    layers = list(model.get_submodule(paths[0]))
    if len({type(layer) for layer in layers}) != 1:
        return "its decoder layers are not all of one class"
    parameters = inspect.signature(layers[0].forward).parameters
    missing = [name for name in LAYER_PARAMETERS if name not in parameters]
    if missing:
        return "%s.forward takes no %s" % (type(layers[0]).__name__, ", ".join(missing))
    return None


LAYER_PARAMETERS = ("hidden_states", "attention_mask", "position_ids", "past_key_value", "use_cache")


class Regions(object):
    """The model compiled whole, its decoder layers called as one nested compile region while it runs."""

    def __init__(self, model, compiled):
        # One region function for all layers: dynamo reuses a traced region only for the same function.
        regions = {
            "tuple": torch.compiler.nested_compile_region(layer_with_tuple_cache),
            "object": torch.compiler.nested_compile_region(layer_with_cache_object),
        }
        self.regions = regions
        self.layers = CompiledLayers(model, lambda layer: RegionLayer(layer, regions), call=compiled)
        # Precompiled code refuses tensors marked since it was traced: it marks them only before a trace.
        self.fix_head_sizes = not hasattr(compiled, "before_trace")
        if not self.fix_head_sizes:
            compiled.before_trace = lambda kwargs: fixed_head_sizes(kwargs.get("past_key_values"))

    def is_current(self):
        return self.layers.is_current()

    def __call__(self, *args, **kwargs):
        past = kwargs.get("past_key_values")
        if self.fix_head_sizes:
            fixed_head_sizes(past)
        static_layer = type(past[0]) if past and is_static_layer(past[0]) else None
        if static_layer is not None and static_layer not in self.regions:  # made here: dynamo cannot trace this
            self.regions[static_layer] = torch.compiler.nested_compile_region(layer_with_static_cache(static_layer))
        # RMSNorm's epsilon and the attention's scale are Python floats; unspecialised, they would enter the
        # region as SymFloat operands, which invoke_subgraph does not take.
        with torch._dynamo.config.patch(specialize_float=True):
            return self.layers(*args, **kwargs)


def fixed_head_sizes(past_key_values):
    """Mark the head-count and head-size dimensions of the KV cache's tensors static. Under dynamic=True they
    would start as symbols and be specialised to constants while tracing (views by the config's head count),
    which torch 2.13's reuse of a traced region cannot resolve (`KeyError` in stamp_out_subgraph)."""
    for layer in past_key_values or ():
        for tensor in (layer.key, layer.value) if is_static_layer(layer) else layer:
            if isinstance(tensor, torch.Tensor) and tensor.dim() == 4:
                torch._dynamo.mark_static(tensor, 1)
                torch._dynamo.mark_static(tensor, 3)


def is_static_layer(value):
    """Whether `value` is a layer of the static-cache patch's KV cache (keys, values and the slots to write)."""
    return hasattr(value, "slots")


class RegionLayer(torch.nn.Module):
    """One decoder layer as the model calls it, running the layer inside a region of plain tensors."""

    def __init__(self, layer, regions):
        super().__init__()
        self.layer = layer
        self.regions = regions

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None, output_attentions=False, use_cache=False, **kwargs):
        cache = past_key_value
        known = cache is None or isinstance(cache, tuple) or is_static_layer(cache) or type(cache).__name__ == "DynamicCache"
        if output_attentions or not known:
            # Attention weights are not plain outputs; another Cache class (transformers' own static cache, say)
            # has its own update. The layer is then traced where it is called, as in the scope "model".
            return self.layer(hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=cache, output_attentions=output_attentions, use_cache=use_cache, **kwargs)
        if is_static_layer(cache):  # keys and values written in place
            return (self.regions[type(cache)](self.layer, hidden_states, attention_mask, position_ids, cache.key, cache.value, cache.slots),)
        if cache is None or isinstance(cache, tuple):
            key, value = cache or (None, None)
            attention_mask = mask_sized_by_cache(attention_mask, hidden_states, key)
            hidden, key, value = self.regions["tuple"](self.layer, hidden_states, attention_mask, position_ids, key, value, use_cache, **kwargs)
            return (hidden, (key, value)) if use_cache else (hidden,)
        # transformers' DynamicCache (4.36 and later), shared by all layers: the region sees this layer's part
        index = self.layer.self_attn.layer_idx
        key, value = (cache.key_cache[index], cache.value_cache[index]) if len(cache.key_cache) > index else (None, None)
        attention_mask = mask_sized_by_cache(attention_mask, hidden_states, key)
        hidden, key, value = self.regions["object"](self.layer, hidden_states, attention_mask, position_ids, key, value, **kwargs)
        keep_in_cache(cache, index, key, value, hidden_states.shape[-2])
        return (hidden, cache) if use_cache else (hidden,)


def mask_sized_by_cache(attention_mask, hidden_states, key):
    """The 4-d attention mask as a new tensor of the keys' length (past and new tokens), for the region.

    Tracing finds the mask's own length equal to past length + 1 and rewrites it so; torch 2.13 then cannot
    reuse the region for the next layer (`KeyError: s1 + 1` in stamp_out_subgraph; torch 2.14 looks sizes up
    unrewritten). Cut to that sum and copied, the mask has no size or stride of its own left to rewrite.
    From transformers 4.38 on the attention cuts the mask to the keys' length itself."""
    if attention_mask is None or attention_mask.dim() != 4:
        return attention_mask
    length = hidden_states.shape[-2] + (0 if key is None else key.shape[-2])
    return attention_mask[:, :, :, :length].clone(memory_format=torch.contiguous_format)


def layer_with_tuple_cache(layer, hidden_states, attention_mask, position_ids, key, value, use_cache, **kwargs):
    """transformers 4.28 to 4.35: the layer takes and returns its keys and values as a tuple."""
    past = None if key is None else (key, value)
    outputs = layer(hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=past, use_cache=use_cache, **kwargs)
    if not use_cache:
        return outputs[0], hidden_states.new_empty(0), hidden_states.new_empty(0)
    key, value = outputs[-1]
    return outputs[0], key, value


def layer_with_cache_object(layer, hidden_states, attention_mask, position_ids, key, value, **kwargs):
    """transformers 4.36 and later: the layer updates a Cache object; here one that holds only its own part."""
    cache = LayerCache(key, value)
    outputs = layer(hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=cache, use_cache=True, **kwargs)
    return outputs[0], cache.key, cache.value


def layer_with_static_cache(static_layer):
    """The static-cache patch: the layer writes this step's keys and values into `key` and `value` in place.
    The class of its cache layers comes in by closure: a region takes tensors, constants and modules only."""

    def layer_with_static_cache(layer, hidden_states, attention_mask, position_ids, key, value, slots):
        past = static_layer(key, value, slots)
        return layer(hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=past, use_cache=False)[0]

    return layer_with_static_cache


class LayerCache(object):
    """One layer's keys and values as transformers' Cache API hands them to its attention (DynamicCache's
    `update`, `get_seq_length`, `get_usable_length`), made inside the region so that it has no outside state."""

    def __init__(self, key, value):
        self.key = key
        self.value = value

    def update(self, key, value, layer_idx, cache_kwargs=None):
        if self.key is not None:
            key = torch.cat([self.key, key], dim=-2)
            value = torch.cat([self.value, value], dim=-2)
        self.key, self.value = key, value
        return key, value

    def get_seq_length(self, layer_idx=0):
        return 0 if self.key is None else self.key.shape[-2]

    def get_usable_length(self, new_seq_length, layer_idx=0):
        return self.get_seq_length(layer_idx)


def keep_in_cache(cache, index, key, value, new_tokens):
    """Store a layer's keys and values in transformers' DynamicCache as its `update` does (4.36 to 4.41)."""
    if index == 0:
        name = "_seen_tokens" if hasattr(cache, "_seen_tokens") else "seen_tokens"  # 4.36 to 4.38: seen_tokens
        setattr(cache, name, getattr(cache, name) + new_tokens)
    if len(cache.key_cache) <= index:
        cache.key_cache.append(key)
        cache.value_cache.append(value)
    else:
        cache.key_cache[index] = key
        cache.value_cache[index] = value


# -- running the compiled model inside the generation loop -------------------------------------------------


class Runner(object):
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
        if self.__eager:
            return self.__model(*args, **kwargs)
        stats = dynamo_stats()
        before = stats["unique_graphs"]
        try:
            if torch.is_inference_mode_enabled():
                # Tensors made under inference_mode carry other dispatch keys than those made under no_grad,
                # and dynamo would compile apart for them (pipeline() generates under inference_mode).
                with torch.inference_mode(False), torch.no_grad():
                    outputs = self.__call_compiled(*model_inputs(args, kwargs, ordinary=True))
            else:
                outputs = self.__call_compiled(*model_inputs(args, kwargs, ordinary=False))
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
            contiguous_cache(outputs)
            self.__first = False
        return outputs

    def llama_graph_patch_finish(self):
        """After the generation loop: keep what this call compiled in the compile cache. (Named apart from
        anything a model may have, since every other attribute is the model's.)"""
        if self.__new_graphs and self.__cache is not None:
            compile_cache.save_compile_cache(self.__cache)
            ahead = self.__cache.get("precompiled")
            if ahead is not None:
                ahead.save()

    def __call_compiled(self, args, kwargs):
        for module in self.__state["sdpa_masks"]:
            module._use_sdpa = False
        try:
            return self.__call_within_budget(args, kwargs)
        finally:
            for module in self.__state["sdpa_masks"]:
                module._use_sdpa = True

    def __call_within_budget(self, args, kwargs):
        if self.__state["graphs"] < self.__budget:
            return self.__compiled(*args, **kwargs)
        if not hasattr(torch.compiler, "set_stance"):  # torch < 2.6: no way to run compiled without compiling
            raise RuntimeError("no graphs compiled beyond LLAMA_GRAPH_PATCH_MAX_GRAPHS on torch < 2.6")
        with torch.compiler.set_stance("fail_on_recompile"):  # the graphs it has, no new one
            return self.__compiled(*args, **kwargs)

    def __fall_back(self, error):
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
        if self.__state["warned"]:
            logger.info(message)
        else:
            self.__state["warned"] = True
            logger.warning(message)


def dynamo_stats():
    """dynamo's running totals, unique_graphs among them: the graphs compiled so far in this process."""
    # Imported on the first compiled call, so that importing transformers does not load dynamo.
    from torch._dynamo.utils import counters

    return counters["stats"]


def model_inputs(args, kwargs, ordinary):
    """The model call's arguments as the compiled model should see them, to keep its guards few.

    A top-level tensor that is a view (decode steps feed `input_ids[:, -1:]`) becomes a compact copy:
    dynamo guards on views, their strides and storage offsets, and for a batch of one those change every
    step. With `ordinary`, every inference tensor, also inside past_key_values, becomes an ordinary copy;
    call it outside inference mode then.
    """

    def top(value):
        if isinstance(value, torch.Tensor):
            if value._base is not None or not value.is_contiguous() or (ordinary and value.is_inference()):
                return value.clone(memory_format=torch.contiguous_format)
            return value
        return without_inference_tensors(value) if ordinary else value

    return tuple(top(value) for value in args), {name: top(value) for name, value in kwargs.items()}


def without_inference_tensors(value):
    """`value` with every inference tensor in it (also inside tuples, lists and dicts) replaced by an
    ordinary copy. Call outside inference mode."""
    return _pytree.tree_map(
        lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) and leaf.is_inference() else leaf, value
    )


def contiguous_cache(outputs):
    """Give the keys and values in `outputs.past_key_values` the layout decode steps hand them out in."""
    past = getattr(outputs, "past_key_values", None)
    if isinstance(past, tuple):
        outputs["past_key_values"] = tuple(tuple(standard_layout(tensor) for tensor in layer) for layer in past)
    elif hasattr(past, "key_cache"):  # transformers' Cache objects (4.36 and later)
        past.key_cache[:] = [standard_layout(tensor) for tensor in past.key_cache]
        past.value_cache[:] = [standard_layout(tensor) for tensor in past.value_cache]


def standard_layout(tensor):
    """`tensor` with the strides of a new contiguous tensor of its shape. contiguous() leaves the stride of a
    dimension of size 1 as it was, and dynamo guards on it: with one key-value head (a tensor-parallel rank's
    share of a grouped-query model, or multi-query attention) the second decode step compiled a third graph."""
    strides, step = [], 1
    for size in reversed(tensor.shape):
        strides.insert(0, step)
        step *= max(size, 1)
    if list(tensor.stride()) == strides:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


# -- per-step timing ------------------------------------------------------------------------------------


class StepTimer(object):
    """Device-synchronized wall time of each forward step, written as JSON lines when generation ends."""

    def __init__(self, path, device, batch_size, method):
        self.path = path
        self.batch_size = int(batch_size)  # rows the model sees: batch x beams in the beam searches
        self.method = method
        self.clock = time.perf_counter
        self.synchronize = synchronizer(device)
        self.started = 0.0
        self.steps = []  # (milliseconds, tokens fed) per step, kept in memory: no file I/O in the loop

    def start(self):
        self.synchronize()
        self.started = self.clock()

    def stop(self, model_inputs):
        self.synchronize()
        elapsed_ms = (self.clock() - self.started) * 1000.0
        fed = model_inputs.get("input_ids")
        if fed is None:
            fed = model_inputs["inputs_embeds"]
        self.steps.append((elapsed_ms, int(fed.shape[1])))

    def write(self):
        lines = []
        for step, (elapsed_ms, input_len) in enumerate(self.steps):
            record = {
                "step": step,
                "method": self.method,
                "phase": "prefill" if step == 0 else "decode",
                "ms": elapsed_ms,
                "batch_size": self.batch_size,
                "input_len": input_len,
            }
            lines.append(json.dumps(record) + "\n")
        with open(self.path, "a", encoding="utf-8") as sink:
            sink.write("".join(lines))
        self.steps = []


def synchronizer(device):
    """Wait for the device's queued work: torch.npu on npu, torch.cuda on cuda, nothing on cpu."""
    if device.type == "npu":
        return torch.npu.synchronize
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
