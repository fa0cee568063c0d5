"""The tool's cache folder and what is in it, as the patched transformers lays it out.

    $LLAMA_GRAPH_PATCH_CACHE (default ~/.cache/llama-graph-patch, under XDG_CACHE_HOME when set)
        embedded-tiny-llama-*/     the bench's embedded model
        compile/                   the compile cache the patched transformers keeps (docs/compile-time.md)
            artifacts/KEY.bin      torch's caches for one model shape, mode, scope, ...
            precompiled/KEY.bin    code compiled ahead, per phase and batch-size class

The patched transformers computes the same folder itself and writes those files
(patches/graph_mode/_llama_graph_patch/compile_cache.py), since it may not import this tool.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# The first line of every cache file: a JSON header whose "format" starts so (see the runtime's cache module).
HEADER_PREFIX = "llama-graph-patch "


def cache_folder() -> Path:
    root = os.environ.get("LLAMA_GRAPH_PATCH_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-graph-patch"


def compile_folder(root: Path | None = None) -> Path:
    return (root or cache_folder()) / "compile"


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int

    @property
    def mb(self) -> float:
        return self.bytes / 2**20

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.files - other.files, self.bytes - other.bytes)


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


def artifacts(folder: Path) -> list[dict]:
    """What each cache file under `folder` (artifacts/, precompiled/) was written for, read from its header."""
    found = []
    for path in sorted([*folder.glob("artifacts/*.bin"), *folder.glob("precompiled/*.bin")]):
        try:
            with path.open("rb") as source:
                header = json.loads(source.readline().decode("utf-8"))
            key = header["key"]
            if not header["format"].startswith(HEADER_PREFIX):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            found.append({"file": str(path), "kind": "unreadable", "mb": path.stat().st_size / 2**20})
            continue
        config = key.get("config", {})
        found.append(
            {
                "file": str(path),
                "kind": path.parent.name,
                "mb": path.stat().st_size / 2**20,
                "mode": key.get("graph_mode"),
                "scope": key.get("scope"),
                "kv_cache": key.get("kv_cache"),
                "rows": key.get("rows"),
                "phases": [entry.get("phase") for entry in header.get("entries", [])] or None,
                "shape": {name: config.get(name) for name in SHAPE},
                "dtype": key.get("dtype"),
                "device": key.get("device"),
                "torch": key.get("torch"),
                "transformers": key.get("transformers"),
            }
        )
    return found


SHAPE = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size")


def describe(artifact: dict) -> str:
    """One line for `status`."""
    if artifact["kind"] == "unreadable":
        return f"{artifact['file']}: unreadable, {artifact['mb']:.1f} MB"
    shape = artifact["shape"]
    text = (
        f"{artifact['kind']}: {artifact['mode']}@{artifact['scope']}, {artifact['kv_cache']} KV cache, "
        f"{shape['num_hidden_layers']} layers x {shape['hidden_size']} ({shape['num_attention_heads']} heads, "
        f"{shape['num_key_value_heads']} KV), {artifact['dtype'].replace('torch.', '')} on {artifact['device']}"
    )
    if artifact["rows"]:
        text += f", batch {artifact['rows']}"
    if artifact["phases"]:
        text += f", {' + '.join(artifact['phases'])}"
    return f"{text}, torch {artifact['torch']}: {artifact['mb']:.1f} MB ({Path(artifact['file']).name})"
