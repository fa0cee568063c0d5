"""What the static-cache patch puts into the classes of transformers/models/llama/modeling_llama.py.

Each method here that the class already has is a dispatch, copied to the top of that method; it repeats
the method's parameter list so the codemod can check the names it uses. Methods named
`llama_graph_patch_*` are new and are added to the class.
"""


class LlamaAttention:
    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None, output_attentions=False, use_cache=False):
        # llama-graph-patch: a layer of the static KV cache takes the static path (static-cache patch)
        if isinstance(past_key_value, _llama_graph_patch_kv_cache.StaticKVLayer):
            return _llama_graph_patch_kv_cache.attention_forward(
                self, hidden_states, attention_mask, position_ids, past_key_value, output_attentions
            )


class LlamaModel:
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        # llama-graph-patch: the static KV cache takes the static path (static-cache patch)
        if past_key_values is not None and isinstance(past_key_values[0], _llama_graph_patch_kv_cache.StaticKVLayer):
            return _llama_graph_patch_kv_cache.model_forward(
                self,
                input_ids,
                attention_mask,
                position_ids,
                past_key_values,
                inputs_embeds,
                output_attentions,
                output_hidden_states,
                return_dict,
            )


class LlamaForCausalLM:
    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, **kwargs):
        # llama-graph-patch: with a static KV cache every decode step feeds tensors of the same shapes
        if kwargs.get("llama_graph_patch_kv_cache") is not None:
            return _llama_graph_patch_kv_cache.static_inputs(kwargs["llama_graph_patch_kv_cache"], input_ids, attention_mask)

    def llama_graph_patch_kv_cache(self, batch_size, max_length, device):
        """A new zeroed static KV cache for a generate call (added by llama-graph-patch)."""
        return _llama_graph_patch_kv_cache.make(self, batch_size, max_length, device)
