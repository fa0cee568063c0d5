"""llama-graph-patch: put transformers 4.31.0 Llama generation into PyTorch graph mode, measure it, undo it."""

# The tool's one version: pyproject.toml reads it, and every record of an applied patch names it.
__version__ = "0.2.0"
