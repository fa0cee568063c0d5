"""Statements the graph-mode patch puts into GenerationMixin's decoding methods (greedy_search, sample and the
beam searches of transformers 4.31.0). They call the graph-mode runtime, the package
transformers/generation/_llama_graph_patch/, which the import in imports.py brings into generation/utils.py.

Each function names a place in the method; the codemods copy its body there. The functions are
containers only: their parameters list the method's names the body uses, and `method_name`, which the
codemods replace by the method's name as a string.
"""


def before_loop(self, input_ids, method_name):
    # llama-graph-patch: compile as EXE_MODE / GRAPH_MODE ask; time steps if LLAMA_GRAPH_PATCH_TIMING is set
    self = _llama_graph_patch.compile_for_generation(self, input_ids)
    _llama_graph_patch_timer = _llama_graph_patch.step_timer(self, input_ids, method_name)


def before_forward(_llama_graph_patch_timer):
    if _llama_graph_patch_timer is not None:
        _llama_graph_patch_timer.start()


def after_forward(_llama_graph_patch_timer, model_inputs):
    if _llama_graph_patch_timer is not None:
        _llama_graph_patch_timer.stop(model_inputs)


def after_loop(self, _llama_graph_patch_timer):
    _llama_graph_patch.finish(self, _llama_graph_patch_timer)
