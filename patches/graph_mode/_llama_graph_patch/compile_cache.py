"""The compile cache: what a later process needs to compile fast, kept in the tool's cache folder.

    compile/inductor/               inductor's own on-disk caches (TORCHINDUCTOR_CACHE_DIR, unless already set)
    compile/artifacts/KEY.bin       torch.compiler.save_cache_artifacts() output, one file per model shape,
                                    dtype, device, mode, scope, KV cache and versions: what makes a later
                                    compile fast, though dynamo still traces
    compile/precompiled/KEY.bin     code compiled ahead per phase, called without tracing (precompiled.py)

A file that cannot be used gives one WARNING and a normal compile (files.py: how they are written and read).
"""

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import files

logger = logging.getLogger("llama_graph_patch")

ARTIFACT_FORMAT = "llama-graph-patch compile artifacts 1"


@dataclass
class CompileCacheFile:
    """The artifact file of one compiled model, and what the compile cache gave it."""

    path: str  # compile/artifacts/KEY.bin
    key: dict  # everything the compiled code depends on (compile_key)
    folder: str  # the tool's cache folder, where trust is checked from
    state: str = "cold"  # "cold": compiled anew; "warm": torch's artifacts loaded; "precompiled": stored code ran
    load_s: float = 0.0  # seconds spent loading precompiled code
    precompiled: Optional[object] = field(default=None, repr=False)  # its Precompiled, where code is compiled ahead


def compile_folder(cache_folder):
    return os.path.join(cache_folder, "compile")


def compile_key(model, device, description):
    """Everything compiled code depends on: the model's shape, dtype, device, how it is compiled, versions."""
    import transformers

    key = dict(description)
    key.update(
        model=type(model).__name__,
        config={
            name: value
            for name, value in sorted(model.config.to_dict().items())
            if isinstance(value, (int, float, str)) and not name.startswith("_") and name != "transformers_version"
        },
        dtype=str(model.dtype),
        device=device_name(device),
        torch=torch.__version__,
        transformers=transformers.__version__,
        runtime=runtime_digest(),
    )
    # Each rank of a tensor-parallel model compiles for its share of the weights and its place in the group.
    key["world_size"], key["rank"] = tensor_parallel()
    if device.type == "npu":
        key["cann"] = getattr(torch.version, "cann", None)  # set by torch_npu
    return key


def tensor_parallel():
    """(world size, rank) of the default process group where torch.distributed runs one, else (1, 0)."""
    distributed = getattr(torch, "distributed", None)
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return 1, 0
    return distributed.get_world_size(), distributed.get_rank()


def device_name(device):
    """The device type and model: compiled kernels are built for one (a CPU's for its vector instructions)."""
    if device.type == "cuda":
        return "cuda " + torch.cuda.get_device_name(device)
    if device.type == "npu":
        return "npu " + torch.npu.get_device_name()
    if device.type == "cpu":
        return "cpu " + cpu_name()
    return device.type


def cpu_name():
    """The CPU's model name as /proc/cpuinfo gives it, else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as source:
            for line in source:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    import platform

    return platform.processor() or platform.machine()


def runtime_digest():
    """The version of the patch that compiled: a digest of this package's modules as installed."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as source:
                digest.update(name.encode("utf-8") + b"\0" + source.read())
    return digest.hexdigest()[:16]


def key_digest(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def open_compile_cache(cache_folder, model, device, description):
    """Point inductor's caches into the compile cache and load this model's artifact file. None when the
    folder is refused (see files.untrusted)."""
    folder = compile_folder(cache_folder)
    refused = files.untrusted(os.path.join(folder, "inductor"), cache_folder)
    if refused:
        logger.warning(
            "llama-graph-patch: not using the compile cache under %s: %s; another user could place code there "
            "that this process would load. Compiling as usual, and nothing is saved",
            cache_folder,
            refused,
        )
        return None
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Importing torch._inductor sets the variable to its default, a folder in /tmp: replace that one only.
    if inductor is None or is_inductor_default(inductor):
        files.make_folder(os.path.join(folder, "inductor"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    key = compile_key(model, device, description)
    cache = CompileCacheFile(os.path.join(folder, "artifacts", key_digest(key) + ".bin"), key, cache_folder)
    if not hasattr(torch.compiler, "load_cache_artifacts"):  # torch < 2.7: inductor's caches only
        inductor = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        cache.state = "warm" if os.path.isdir(inductor) and os.listdir(inductor) else "cold"
        return cache
    if os.path.exists(cache.path):
        try:
            torch.compiler.load_cache_artifacts(read_artifacts(cache))
            cache.state = "warm"
        except Exception as error:  # whatever is wrong with the file, compiling as usual is right
            logger.warning(
                "llama-graph-patch: not using the compile artifacts in %s (%s); compiling as usual, and the file "
                "is replaced after this compile",
                cache.path,
                error,
            )
    return cache


def is_inductor_default(folder):
    """Whether `folder` is inductor's default cache folder, torchinductor_USER in the temporary folder."""
    folder = os.path.abspath(folder)
    return os.path.dirname(folder) == os.path.abspath(tempfile.gettempdir()) and os.path.basename(
        folder
    ).startswith("torchinductor_")


def read_artifacts(cache):
    """The artifact bytes of `cache`'s file, after checking that its header names its key and its bytes are whole."""
    header, payload = files.read_file(cache.path, cache.folder, ARTIFACT_FORMAT, cache.key)
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("damaged: its bytes do not match the checksum in its header")
    return payload


def save_compile_cache(cache):
    """After a generate call that compiled: keep what it compiled, torch's artifacts and any precompiled code."""
    save_artifacts(cache)
    if cache.precompiled is not None:
        cache.precompiled.save()


def save_artifacts(cache):
    """Write everything torch compiled in this process to the artifact file. A failure to write is a
    WARNING: the generate call already has its tokens."""
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return
    payload = saved[0]
    header = {"format": ARTIFACT_FORMAT, "key": cache.key, "sha256": hashlib.sha256(payload).hexdigest()}
    try:
        files.write_file(cache.path, header, payload)
    except OSError as error:
        logger.warning("llama-graph-patch: could not save compile artifacts to %s: %s", cache.path, error)
        return
    logger.info("llama-graph-patch: saved %.1f MB of compile artifacts to %s", len(payload) / 2**20, cache.path)
