"""Statements the static-cache patch puts into GenerationMixin.greedy_search and sample (transformers 4.31.0).

As in graph_mode/generation_loop.py, each function's body is copied to the place its name says.
"""


def before_loop(self, input_ids, stopping_criteria, model_kwargs):
    # llama-graph-patch: a fixed-size KV cache, so that every decode step has the same shapes
    model_kwargs = _llama_graph_patch_static_cache(self, input_ids, stopping_criteria, model_kwargs)
