"""The static KV cache for transformers 4.31.0's Llama: installed by llama-graph-patch (static-cache
patch) as transformers/models/llama/_llama_graph_patch_kv_cache.py, and removed by
`llama-graph-patch revert`. modeling_llama.py's LlamaAttention, LlamaModel and LlamaForCausalLM dispatch
here when a generate call runs with this cache; it uses modeling_llama's own `apply_rotary_pos_emb` and
`repeat_kv`. The graph-mode runtime (generation/_llama_graph_patch/kv_cache.py) gets a cache from the
model's `llama_graph_patch_kv_cache` method, keeps it for the next call, and hands it to
prepare_inputs_for_generation under the same name.

The idea (upstream torchair's and gpt-fast's): allocate every layer's keys and values once per generate
call at (batch, kv_heads, prompt + new tokens, head_dim), write each step's keys and values in place at
their slots, and attend over the whole fixed-length cache with a mask for padding and for slots not yet
written. Every decode step then feeds the model tensors of identical shapes, so one compiled graph
serves them all and graph capture (CUDA graphs, aclgraph) can replay it.

Like the graph-mode runtime, it is copied byte for byte, imports nothing from llama-graph-patch and parses
with the Python 3.8 grammar. LLAMA_GRAPH_PATCH_STATIC_CACHE=1 (default) | 0 switches it on or off.
"""

import logging
import math

import torch

from ...modeling_outputs import BaseModelOutputWithPast
from . import modeling_llama  # imported while modeling_llama itself loads: use its names at call time only

logger = logging.getLogger("llama_graph_patch")


class StaticKVLayer(object):
    """One decoder layer's part of the static KV cache, as one forward step sees it."""

    def __init__(self, key, value, slots):
        self.key = key  # (batch, kv_heads, max_length, head_dim), written in place
        self.value = value  # same shape as key
        self.slots = slots  # (new_tokens,) int64: the cache positions of the tokens fed in this step


class StaticKVCache(object):
    """Fixed-size keys and values of every layer, for one generate call and the later ones that fit."""

    Layer = StaticKVLayer  # what its `layers` hands out, one per decoder layer

    def __init__(self, attention, layers, batch_size, max_length, dtype, device):
        # The heads of the attention module, not of the config: a tensor-parallel rank holds only its share.
        self.shape = (batch_size, attention.num_key_value_heads, max_length, attention.head_dim)
        self.dtype = dtype
        self.device = device
        # Ordinary tensors even when generate runs under inference_mode: the compiled model runs outside it
        # and writes into them.
        with torch.inference_mode(False):
            self.keys = [torch.zeros(self.shape, dtype=dtype, device=device) for _ in range(layers)]
            self.values = [torch.zeros(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        import torch._dynamo as dynamo  # only once a static cache is made: importing transformers does not load it

        mark_static_address = getattr(dynamo, "mark_static_address", None)
        if mark_static_address is not None:
            # Graph capture then updates these buffers in place instead of copying them on every replay.
            # guard=False: a new cache of another size reuses the compiled graphs instead of compiling anew.
            for tensor in self.keys + self.values:
                mark_static_address(tensor, guard=False)
        self.written = 0  # slots filled so far in this generate call; a host-side int, never a graph input

    @property
    def max_length(self):
        return self.shape[2]

    @property
    def nbytes(self):
        return sum(tensor.numel() * tensor.element_size() for tensor in self.keys + self.values)

    def fits(self, batch_size, max_length, dtype, device):
        """Whether a call of this batch size and length can use these buffers (slots past its length stay
        masked)."""
        return self.shape[0] == batch_size and max_length <= self.max_length and (self.dtype, self.device) == (
            dtype,
            device,
        )

    def reset(self):
        for tensor in self.keys + self.values:
            tensor.zero_()
        self.written = 0

    def layers(self, slots):
        return tuple(StaticKVLayer(key, value, slots) for key, value in zip(self.keys, self.values))

    def __repr__(self):
        return "%d layers x 2 x %s %s, %.1f MB" % (
            len(self.keys),
            "x".join(str(size) for size in self.shape),
            str(self.dtype).replace("torch.", ""),
            self.nbytes / 2**20,
        )


def make(model, batch_size, max_length, device):
    """A new zeroed static KV cache for `model`, or None (with a WARNING) where it cannot have one."""
    if getattr(model.config, "pretraining_tp", 1) > 1:
        logger.warning(
            "llama-graph-patch: no static KV cache for pretraining_tp > 1; using the growing cache"
        )
        return None
    layers = model.model.layers
    return StaticKVCache(layers[0].self_attn, len(layers), batch_size, max_length, model.dtype, device)


def static_inputs(cache, input_ids, attention_mask):
    """Model inputs for one step: the tokens not yet in the cache, their slots, their positions, and the
    attention mask padded to the cache length. Decode steps get the same shapes every time."""
    length = input_ids.shape[1]
    start = cache.written
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    with torch.inference_mode(False):  # an ordinary tensor, like the cache it indexes
        slots = torch.arange(start, length, dtype=torch.long, device=input_ids.device)
    cache.written = length
    return {
        "input_ids": input_ids[:, start:].contiguous(),
        "position_ids": position_ids[:, start:].contiguous(),
        "past_key_values": cache.layers(slots),
        "use_cache": False,
        "attention_mask": torch.nn.functional.pad(attention_mask, (0, cache.max_length - length)),
    }


def model_forward(
    model,
    input_ids,
    attention_mask,
    position_ids,
    past_key_values,
    inputs_embeds,
    output_attentions,
    output_hidden_states,
    return_dict,
):
    """LlamaModel.forward over a static cache. attention_mask: (batch, max_length), 1 for tokens."""
    config = model.config
    output_attentions = config.output_attentions if output_attentions is None else output_attentions
    output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    return_dict = config.use_return_dict if return_dict is None else return_dict
    hidden_states = model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    # (batch, 1, new_tokens, max_length): a token sees non-padding slots up to its own.
    slots = past_key_values[0].slots
    cache_slots = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    visible = (attention_mask[:, None, None, :] != 0) & (cache_slots[None, None, None, :] <= slots[None, None, :, None])
    mask = torch.zeros(visible.shape, dtype=hidden_states.dtype, device=hidden_states.device)
    mask = mask.masked_fill(~visible, torch.finfo(hidden_states.dtype).min)

    all_hidden_states = () if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for layer, layer_cache in zip(model.layers, past_key_values):
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        outputs = layer(
            hidden_states,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_value=layer_cache,
            output_attentions=output_attentions,
            use_cache=False,
        )
        hidden_states = outputs[0]
        if output_attentions:
            all_attentions += (outputs[1],)
    hidden_states = model.norm(hidden_states)
    if output_hidden_states:
        all_hidden_states += (hidden_states,)
    if not return_dict:
        return tuple(value for value in (hidden_states, all_hidden_states, all_attentions) if value is not None)
    return BaseModelOutputWithPast(
        last_hidden_state=hidden_states,
        past_key_values=None,
        hidden_states=all_hidden_states,
        attentions=all_attentions,
    )


def attention_forward(attention, hidden_states, attention_mask, position_ids, cache, output_attentions):
    """LlamaAttention.forward over one layer of the static cache; attention_mask is additive,
    (batch, 1, new_tokens, max_length)."""
    batch, new_tokens, _ = hidden_states.size()
    head_dim = attention.head_dim
    query = attention.q_proj(hidden_states).view(batch, new_tokens, attention.num_heads, head_dim).transpose(1, 2)
    key = attention.k_proj(hidden_states).view(batch, new_tokens, attention.num_key_value_heads, head_dim)
    value = attention.v_proj(hidden_states).view(batch, new_tokens, attention.num_key_value_heads, head_dim)
    key, value = key.transpose(1, 2), value.transpose(1, 2)
    cos, sin = attention.rotary_emb(value, seq_len=cache.key.shape[2])
    query, key = modeling_llama.apply_rotary_pos_emb(query, key, cos, sin, position_ids)
    write_cache(cache.key, key, cache.slots)
    write_cache(cache.value, value, cache.slots)

    keys = modeling_llama.repeat_kv(cache.key, attention.num_key_value_groups)
    values = modeling_llama.repeat_kv(cache.value, attention.num_key_value_groups)
    weights = torch.matmul(query, keys.transpose(2, 3)) / math.sqrt(head_dim) + attention_mask
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, values).transpose(1, 2).contiguous()
    output = attention.o_proj(output.reshape(batch, new_tokens, attention.hidden_size))
    return output, (weights if output_attentions else None), None


def write_cache(cache, states, slots):
    """cache[:, :, slots] = states, in place. On NPU: torch_npu.scatter_update_, the in-place update that
    torchair keeps inside a captured graph, with one start position per batch row."""
    if cache.device.type == "npu":
        import torch_npu  # only on an NPU, where it is installed

        starts = slots[:1].expand(cache.shape[0]).contiguous()
        torch_npu.scatter_update_(cache, starts, states, 2)
    else:
        cache.index_copy_(2, slots, states)
