"""Statements the graph-mode patch puts into GenerationMixin.greedy_search (transformers 4.31.0).

Each function names a place in greedy_search; the codemods copy its body there. The functions are
containers only: their parameters list the greedy_search names the body uses.
"""


def before_loop(self, input_ids):
    # llama-graph-patch: compile as EXE_MODE / GRAPH_MODE ask; time steps if LLAMA_GRAPH_PATCH_TIMING is set
    self = _llama_graph_patch_compile(self, input_ids)
    _llama_graph_patch_timer = _llama_graph_patch_step_timer(input_ids)


def before_forward(_llama_graph_patch_timer):
    if _llama_graph_patch_timer is not None:
        _llama_graph_patch_timer.start()


def after_forward(_llama_graph_patch_timer, model_inputs):
    if _llama_graph_patch_timer is not None:
        _llama_graph_patch_timer.stop(model_inputs)


def after_loop(self, _llama_graph_patch_timer):
    _llama_graph_patch_finish(self, _llama_graph_patch_timer)
