"""Statements the static-cache patch puts into GenerationMixin.greedy_search and sample (transformers 4.31.0).

As in graph_mode/generation_loop.py, each function's body is copied to the place its name says. The
graph-mode runtime it calls comes with the graph-mode patch, which the static-cache patch requires; its
lines before the loop run first and hand this one the runner as `self`.
"""


def before_loop(self, input_ids, stopping_criteria, model_kwargs):
    # llama-graph-patch: a fixed-size KV cache, so that every decode step has the same shapes
    model_kwargs = _llama_graph_patch.with_static_cache(self, input_ids, stopping_criteria, model_kwargs)
