"""Put first on the import path of a patched transformers: importing this tool from there must fail."""

raise ImportError("the code llama-graph-patch inserted imported `patcher`; it must be self-contained")
