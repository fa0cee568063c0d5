"""What the static-cache patch puts before the generation loop of the beam searches, which reorder the KV
cache every step and so keep transformers' growing cache.

As in graph_mode/generation_loop.py, the body of `before_loop` is copied, `method_name` replaced by the method's
name. It runs after the graph-mode patch's lines there, which hand it the runner as `self`.
"""


def before_loop(self, method_name):
    # llama-graph-patch: beams reorder the KV cache every step; this method keeps the growing cache
    _llama_graph_patch.without_static_cache(self, method_name)
