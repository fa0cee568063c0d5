"""The tool's one cache root and what is in it, as the patched transformers lays it out.

    $LLAMA_GRAPH_PATCH_CACHE (default ~/.cache/llama-graph-patch, under XDG_CACHE_HOME when set)
        embedded-tiny-llama-*/     the bench's embedded model
        compile/                   compile artifacts the patched transformers keeps (see README)

The patched transformers computes the same root itself (cache_root in patches/graph_mode/_llama_graph_patch.py),
since it may not import this tool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("LLAMA_GRAPH_PATCH_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-graph-patch"


def compile_folder(root: Path | None = None) -> Path:
    return (root or cache_root()) / "compile"


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int

    @property
    def mb(self) -> float:
        return self.bytes / 2**20

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.files - other.files, self.bytes - other.bytes)

    def __str__(self) -> str:
        return f"{self.files} files, {self.mb:.1f} MB"


def usage(folder: Path) -> Usage:
    """Files under `folder` and their size; nothing when it does not exist."""
    files = sizes = 0
    for base, _, names in os.walk(folder):
        for name in names:
            try:
                sizes += os.lstat(os.path.join(base, name)).st_size
            except OSError:  # removed meanwhile by a concurrent compile
                continue
            files += 1
    return Usage(files, sizes)
