"""llama-graph-patch: put transformers 4.31.0 Llama generation into PyTorch graph mode, measure it, undo it."""

__version__ = "0.1.0"
