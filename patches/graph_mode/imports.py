"""The one import the graph-mode patch adds to transformers/generation/utils.py, after the module's own
imports: the runtime package the hooks call, installed next to it."""

from . import _llama_graph_patch  # added by llama-graph-patch (graph mode)
