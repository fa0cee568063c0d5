"""What the graph-mode patch puts at the start of the decoding methods it does not compile (contrastive_search
and assisted_decoding of transformers 4.31.0), so that they never run eager silently.

As in generation_loop.py, the body of `at_start` is copied, `method_name` replaced by the method's name.
"""


def at_start(self, method_name):
    # llama-graph-patch: this decoding method is not compiled; under EXE_MODE=dynamo it says so
    _llama_graph_patch.runs_eager(self, method_name)
