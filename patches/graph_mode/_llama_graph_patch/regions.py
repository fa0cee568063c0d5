"""Scope "region": one whole-model graph in which the decoder layer is traced once and reused.

torch.compiler.nested_compile_region traces a function once and reuses the traced subgraph wherever it is
called again with inputs of the same kinds (torch/_dynamo/variables/invoke_subgraph.py, is_reuse_eligible):
tensors, constants and modules in; a tensor or a flat tuple of tensors out, none aliasing an input; no side
effects on objects from outside. A transformers decoder layer meets none of that by itself (it takes and
returns its KV cache as a tuple or a Cache object), so each layer is called through a small module that
hands the region plain tensors and puts the region's keys and values back where the model expects them.
"""

import inspect

import torch

from .backends import torch_older_than
from .scopes import CompiledLayers, module_lists

# The oldest torch whose nested_compile_region this patch was seen to trace a Llama layer with (2.13.0);
# older releases have the function, but their reuse of a traced region is not known to hold here.
REGION_TORCH = (2, 13)
LAYER_PARAMETERS = ("hidden_states", "attention_mask", "position_ids", "past_key_value", "use_cache")


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


class Regions(object):
    """The model compiled whole, its decoder layers called as one nested compile region while it runs.
    `state` (the model's ModelState) says which static KV cache the model holds, if any."""

    def __init__(self, model, compiled, state):
        # One region function per kind of KV cache for all layers: dynamo reuses a traced region only for
        # the same function.
        self.regions = {
            "tuple": torch.compiler.nested_compile_region(layer_with_tuple_cache),
            "object": torch.compiler.nested_compile_region(layer_with_cache_object),
        }
        self.state = state
        self.layers = CompiledLayers(model, lambda layer: RegionLayer(layer, self.regions), call=compiled)
        # Precompiled code refuses tensors marked since it was traced: it marks them only before a trace.
        self.fix_head_sizes = not hasattr(compiled, "before_trace")
        if not self.fix_head_sizes:
            compiled.before_trace = lambda kwargs: fixed_head_sizes(kwargs.get("past_key_values"), self.static_layer())

    def is_current(self):
        return self.layers.is_current()

    def static_layer(self):
        """The class of the static KV cache's layers, where the model holds a static KV cache."""
        cache = self.state.static_kv_cache
        return None if cache is None else cache.Layer

    def __call__(self, *args, **kwargs):
        static_layer = self.static_layer()
        if self.fix_head_sizes:
            fixed_head_sizes(kwargs.get("past_key_values"), static_layer)
        if static_layer is not None and static_layer not in self.regions:  # made here: dynamo cannot trace this
            self.regions[static_layer] = torch.compiler.nested_compile_region(layer_with_static_cache(static_layer))
        # RMSNorm's epsilon and the attention's scale are Python floats; unspecialised, they would enter the
        # region as SymFloat operands, which invoke_subgraph does not take.
        with torch._dynamo.config.patch(specialize_float=True):
            return self.layers(*args, **kwargs)


def fixed_head_sizes(past_key_values, static_layer):
    """Mark the head-count and head-size dimensions of the KV cache's tensors static. Under dynamic=True they
    would start as symbols and be specialised to constants while tracing (views by the config's head count),
    which torch 2.13's reuse of a traced region cannot resolve (`KeyError` in stamp_out_subgraph)."""
    for layer in past_key_values or ():
        for tensor in (layer.key, layer.value) if static_layer is not None and isinstance(layer, static_layer) else layer:
            if isinstance(tensor, torch.Tensor) and tensor.dim() == 4:
                torch._dynamo.mark_static(tensor, 1)
                torch._dynamo.mark_static(tensor, 3)


class RegionLayer(torch.nn.Module):
    """One decoder layer as the model calls it, running the layer inside a region of plain tensors.
    `regions`: the region functions by kind of KV cache, the static KV cache's by the class of its layers."""

    def __init__(self, layer, regions):
        super().__init__()
        self.layer = layer
        self.regions = regions

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None, output_attentions=False, use_cache=False, **kwargs):
        cache = past_key_value
        static = None if output_attentions else self.regions.get(type(cache))
        if static is not None:  # a layer of the static KV cache: keys and values written in place
            return (static(self.layer, hidden_states, attention_mask, position_ids, cache.key, cache.value, cache.slots),)
        if not output_attentions and (cache is None or isinstance(cache, tuple)):
            key, value = cache or (None, None)
            attention_mask = mask_sized_by_cache(attention_mask, hidden_states, key)
            hidden, key, value = self.regions["tuple"](self.layer, hidden_states, attention_mask, position_ids, key, value, use_cache, **kwargs)
            return (hidden, (key, value)) if use_cache else (hidden,)
        if not output_attentions and type(cache).__name__ == "DynamicCache":  # transformers 4.36 and later
            # shared by all layers: the region sees this layer's part
            index = self.layer.self_attn.layer_idx
            key, value = (cache.key_cache[index], cache.value_cache[index]) if len(cache.key_cache) > index else (None, None)
            attention_mask = mask_sized_by_cache(attention_mask, hidden_states, key)
            hidden, key, value = self.regions["object"](self.layer, hidden_states, attention_mask, position_ids, key, value, **kwargs)
            keep_in_cache(cache, index, key, value, hidden_states.shape[-2])
            return (hidden, cache) if use_cache else (hidden,)
        # Attention weights are not plain outputs; another Cache class (transformers' own static cache, say) has
        # its own update. The layer is then traced where it is called, as in the scope "model".
        return self.layer(hidden_states, attention_mask=attention_mask, position_ids=position_ids, past_key_value=cache, output_attentions=output_attentions, use_cache=use_cache, **kwargs)


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
    """The static KV cache: the layer writes this step's keys and values into `key` and `value` in place.
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
