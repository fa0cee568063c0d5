"""The graph-mode patch's persistent compile cache, appended to transformers/generation/utils.py.

Same rules as runtime.py. Everything lives under the tool's cache root, LLAMA_GRAPH_PATCH_CACHE (default
~/.cache/llama-graph-patch), in its compile/ folder:

    compile/inductor/            inductor's own on-disk caches (TORCHINDUCTOR_CACHE_DIR, unless already set)
    compile/artifacts/KEY.bin    torch.compiler.save_cache_artifacts() output, one file per model shape,
                                 dtype, device, mode, scope, KV cache and torch version: a JSON header
                                 line, then the artifact bytes

An artifact file is loaded before the model's first compile in a process and written after a generate
call that compiled, whole (a temporary file renamed over it) and under an flock, so processes sharing the
folder never see half a file. One that cannot be used gives one WARNING and a normal compile.
"""

# ---------------------------------------------------------------------------------------------------
# Added by llama-graph-patch (graph-mode patch); `llama-graph-patch revert` removes it.
# LLAMA_GRAPH_PATCH_CACHE=DIR, LLAMA_GRAPH_PATCH_COMPILE_CACHE=1|0: see the llama-graph-patch README.
# ---------------------------------------------------------------------------------------------------

_LLAMA_GRAPH_PATCH_ARTIFACT_FORMAT = "llama-graph-patch compile artifacts 1"


def _llama_graph_patch_cache_root():
    """LLAMA_GRAPH_PATCH_CACHE, else llama-graph-patch/ in the user's cache folder (XDG_CACHE_HOME)."""
    import os

    root = os.environ.get("LLAMA_GRAPH_PATCH_CACHE")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-graph-patch")


def _llama_graph_patch_open_compile_cache(model, device, description):
    """Point inductor's caches into the cache root and load this model's artifact file. Returns what
    saving needs later (with "state": "warm" when something was loaded, else "cold"), or None when there
    is no cache: LLAMA_GRAPH_PATCH_COMPILE_CACHE=0, or an NPU (README: torchair compiles through GE,
    which torch's caches do not hold)."""
    import hashlib
    import json
    import logging
    import os

    import torch

    if _llama_graph_patch_setting("LLAMA_GRAPH_PATCH_COMPILE_CACHE", "1", ("1", "0")) == "0" or device.type == "npu":
        return None
    folder = os.path.join(_llama_graph_patch_cache_root(), "compile")
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Importing torch._inductor sets the variable to its default, a folder in /tmp: replace that one only.
    if inductor is None or _llama_graph_patch_is_inductor_default(inductor):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    key = dict(description)
    key.update(
        model=type(model).__name__,
        config={
            name: value
            for name, value in sorted(model.config.to_dict().items())
            if isinstance(value, (int, float, str)) and not name.startswith("_") and name != "transformers_version"
        },
        dtype=str(model.dtype),
        device=device.type if device.type != "cuda" else "cuda " + torch.cuda.get_device_name(device),
        torch=torch.__version__,
    )
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    cache = {"path": os.path.join(folder, "artifacts", digest + ".bin"), "key": key, "state": "cold"}
    if not hasattr(torch.compiler, "load_cache_artifacts"):  # torch < 2.7: inductor's caches only
        inductor = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        cache["state"] = "warm" if os.path.isdir(inductor) and os.listdir(inductor) else "cold"
        return cache
    if os.path.exists(cache["path"]):
        try:
            torch.compiler.load_cache_artifacts(_llama_graph_patch_read_artifacts(cache["path"], key))
            cache["state"] = "warm"
        except Exception as error:  # whatever is wrong with the file, compiling as usual is right
            logging.getLogger("llama_graph_patch").warning(
                "llama-graph-patch: not using the compile artifacts in %s (%s); compiling as usual, and the file "
                "is replaced after this compile",
                cache["path"],
                error,
            )
    return cache


def _llama_graph_patch_is_inductor_default(folder):
    """Whether `folder` is inductor's default cache folder, torchinductor_USER in the temporary folder."""
    import os
    import tempfile

    folder = os.path.abspath(folder)
    return os.path.dirname(folder) == os.path.abspath(tempfile.gettempdir()) and os.path.basename(
        folder
    ).startswith("torchinductor_")


def _llama_graph_patch_read_artifacts(path, key):
    """The artifact bytes of `path`, after checking that its header names this key and its bytes are whole."""
    import hashlib
    import json

    with open(path, "rb") as source:
        header_line = source.readline()
        payload = source.read()
    try:
        header = json.loads(header_line.decode("utf-8"))
    except ValueError:
        raise ValueError("unreadable: not a llama-graph-patch artifact file")
    if not isinstance(header, dict) or header.get("format") != _LLAMA_GRAPH_PATCH_ARTIFACT_FORMAT:
        raise ValueError("unreadable: not a llama-graph-patch artifact file")
    if header.get("key") != key:
        stored = header.get("key") or {}
        if isinstance(stored, dict) and stored.get("torch") != key["torch"]:
            raise ValueError("stale: written by torch %s, this is torch %s" % (stored.get("torch"), key["torch"]))
        raise ValueError("foreign: written for another model, dtype, device, mode, scope or KV cache")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("damaged: its bytes do not match the checksum in its header")
    return payload


def _llama_graph_patch_save_compile_cache(cache):
    """Write everything torch compiled in this process to the artifact file, atomically and under a lock.
    A failure to write is a WARNING: the generate call already has its tokens."""
    import hashlib
    import json
    import logging
    import os
    import tempfile

    import torch

    logger = logging.getLogger("llama_graph_patch")
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return
    payload = saved[0]
    header = {
        "format": _LLAMA_GRAPH_PATCH_ARTIFACT_FORMAT,
        "key": cache["key"],
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    folder = os.path.dirname(cache["path"])
    try:
        os.makedirs(folder, exist_ok=True)
        with _LlamaGraphPatchFileLock(cache["path"] + ".lock"):
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".artifacts.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as sink:
                    sink.write(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
                    sink.write(payload)
                    sink.flush()
                    os.fsync(sink.fileno())
                os.replace(temporary, cache["path"])
            except BaseException:
                if os.path.exists(temporary):
                    os.unlink(temporary)
                raise
    except OSError as error:
        logger.warning("llama-graph-patch: could not save compile artifacts to %s: %s", cache["path"], error)
        return
    logger.info("llama-graph-patch: saved %.1f MB of compile artifacts to %s", len(payload) / 2**20, cache["path"])


class _LlamaGraphPatchFileLock(object):
    """An exclusive flock on `path` while the block runs; no lock where fcntl is missing (Windows), where
    the atomic rename alone keeps the file whole."""

    def __init__(self, path):
        self.path = path
        self.handle = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
        return False
