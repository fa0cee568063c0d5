"""llama-graph-patch: put Llama generation of transformers 4.28 to 4.41 into PyTorch graph mode, measure it, undo it."""

# The tool's one version: pyproject.toml reads it, and every record of an applied patch names it.
__version__ = "0.3.0"
