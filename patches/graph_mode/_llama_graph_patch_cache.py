"""The graph-mode patch's persistent compile cache: installed by llama-graph-patch as
transformers/generation/_llama_graph_patch_cache.py next to the runtime (_llama_graph_patch.py), which
calls it, and removed by `llama-graph-patch revert`. Like the runtime it imports nothing from the tool.

Everything lives under the tool's cache root, LLAMA_GRAPH_PATCH_CACHE (default ~/.cache/llama-graph-patch),
in its compile/ folder:

    compile/inductor/               inductor's own on-disk caches (TORCHINDUCTOR_CACHE_DIR, unless already set)
    compile/artifacts/KEY.bin       torch.compiler.save_cache_artifacts() output, one file per model shape,
                                    dtype, device, mode, scope, KV cache and versions: what makes a later
                                    compile fast, though dynamo still traces
    compile/precompiled/KEY.bin     code compiled ahead per phase (prefill, decode) for one batch-size class
                                    too, that a later process calls without tracing (`warm` stores it)

Each file is a JSON header line (format, key, checksums) and then its bytes. It is written whole (a
temporary file renamed over it) under an flock, so processes sharing the folder never see half a file. A
file that cannot be used gives one WARNING and a normal compile. Loading a file runs code (its loaders
unpickle), so, as ssh does with its keys, a folder or file that another user could have written is
refused: group- or world-writable, or owned by another user than this process's or root.
"""

import hashlib
import io
import json
import logging
import os
import stat
import sys
import tempfile
import time
import types

import torch
from torch.utils import _pytree

logger = logging.getLogger("llama_graph_patch")

ARTIFACT_FORMAT = "llama-graph-patch compile artifacts 1"
PRECOMPILED_FORMAT = "llama-graph-patch precompiled code 1"


def cache_root():
    """LLAMA_GRAPH_PATCH_CACHE, else llama-graph-patch/ in the user's cache folder (XDG_CACHE_HOME)."""
    root = os.environ.get("LLAMA_GRAPH_PATCH_CACHE")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-graph-patch")


def compile_folder():
    return os.path.join(cache_root(), "compile")


# -- trust ------------------------------------------------------------------------------------------------


def untrusted(path):
    """Why another user could have written `path` or a folder between the cache root and it, or None. Only
    what exists is checked; folders this module makes are private (make_folder)."""
    root = os.path.abspath(cache_root())
    path = os.path.abspath(path)
    chain = [path]
    while chain[-1] != root and os.path.dirname(chain[-1]) != chain[-1] and chain[-1].startswith(root + os.sep):
        chain.append(os.path.dirname(chain[-1]))
    for place in reversed(chain):
        try:
            info = os.stat(place)
        except FileNotFoundError:
            continue
        if info.st_uid not in (os.getuid(), 0):
            return "%s is owned by user id %d, not by this process's user (%d) or root" % (place, info.st_uid, os.getuid())
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return "%s can be written by %s (mode %s; chmod go-w %s)" % (
                place,
                "every user" if info.st_mode & stat.S_IWOTH else "its group",
                oct(stat.S_IMODE(info.st_mode)),
                place,
            )
    return None


def make_folder(path):
    """Make `path` and the folders above it up to the cache root, each readable by this user only."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile by a concurrent process
            pass


# -- compile artifacts: torch's caches, loaded before the model's first compile ------------------------------


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
    """(world size, rank) of the default process group where torch.distributed runs one, else (1, 0). The
    ranks of a tensor-parallel model compile graphs of their own share of the weights, with the collectives
    in them."""
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
        try:
            with open("/proc/cpuinfo") as source:
                for line in source:
                    if line.startswith("model name"):
                        return "cpu " + line.split(":", 1)[1].strip()
        except OSError:  # not Linux
            pass
        import platform

        return "cpu " + (platform.processor() or platform.machine())
    return device.type


def runtime_digest():
    """The version of the patch that compiled: a digest of its two runtime modules as installed."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("_llama_graph_patch.py", "_llama_graph_patch_cache.py"):
        with open(os.path.join(here, name), "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:16]


def key_digest(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def open_compile_cache(model, device, description):
    """Point inductor's caches into the cache root and load this model's artifact file. Returns what
    saving needs later (with "state": "warm" when something was loaded, else "cold"), or None when the
    cache folder is refused (see untrusted)."""
    folder = compile_folder()
    refused = untrusted(os.path.join(folder, "inductor"))
    if refused:
        logger.warning(
            "llama-graph-patch: not using the compile cache under %s: %s; another user could place code there "
            "that this process would load. Compiling as usual, and nothing is saved",
            cache_root(),
            refused,
        )
        return None
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Importing torch._inductor sets the variable to its default, a folder in /tmp: replace that one only.
    if inductor is None or is_inductor_default(inductor):
        make_folder(os.path.join(folder, "inductor"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    key = compile_key(model, device, description)
    cache = {"path": os.path.join(folder, "artifacts", key_digest(key) + ".bin"), "key": key, "state": "cold"}
    if not hasattr(torch.compiler, "load_cache_artifacts"):  # torch < 2.7: inductor's caches only
        inductor = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        cache["state"] = "warm" if os.path.isdir(inductor) and os.listdir(inductor) else "cold"
        return cache
    if os.path.exists(cache["path"]):
        try:
            torch.compiler.load_cache_artifacts(read_artifacts(cache["path"], key))
            cache["state"] = "warm"
        except Exception as error:  # whatever is wrong with the file, compiling as usual is right
            logger.warning(
                "llama-graph-patch: not using the compile artifacts in %s (%s); compiling as usual, and the file "
                "is replaced after this compile",
                cache["path"],
                error,
            )
    return cache


def is_inductor_default(folder):
    """Whether `folder` is inductor's default cache folder, torchinductor_USER in the temporary folder."""
    folder = os.path.abspath(folder)
    return os.path.dirname(folder) == os.path.abspath(tempfile.gettempdir()) and os.path.basename(
        folder
    ).startswith("torchinductor_")


def read_artifacts(path, key):
    """The artifact bytes of `path`, after checking that its header names this key and its bytes are whole."""
    header, payload = read_file(path, ARTIFACT_FORMAT, key)
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("damaged: its bytes do not match the checksum in its header")
    return payload


def read_file(path, file_format, key):
    """The header and bytes of a cache file of `file_format` written for `key`, after the trust check."""
    refused = untrusted(path)
    if refused:
        raise ValueError("refused: %s; another user could have written it" % refused)
    with open(path, "rb") as source:
        header_line = source.readline()
        payload = source.read()
    try:
        header = json.loads(header_line.decode("utf-8"))
    except ValueError:
        raise ValueError("unreadable: not a llama-graph-patch cache file")
    if not isinstance(header, dict) or header.get("format") != file_format:
        raise ValueError("unreadable: not a llama-graph-patch cache file of this kind")
    if header.get("key") != key:
        stored = header.get("key") or {}
        if not isinstance(stored, dict):
            raise ValueError("unreadable: its header has no key")
        for name in ("torch", "transformers", "runtime", "cann"):
            if stored.get(name) != key.get(name):
                raise ValueError("stale: written by %s %s, this is %s" % (name, stored.get(name), key.get(name)))
        raise ValueError("foreign: written for another model, dtype, device, mode, scope, KV cache or batch size")
    return header, payload


def save_compile_cache(cache):
    """Write everything torch compiled in this process to the artifact file, atomically and under a lock.
    A failure to write is a WARNING: the generate call already has its tokens."""
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return
    payload = saved[0]
    header = {"format": ARTIFACT_FORMAT, "key": cache["key"], "sha256": hashlib.sha256(payload).hexdigest()}
    try:
        with FileLock(cache["path"] + ".lock"):
            write_file(cache["path"], header, payload)
    except OSError as error:
        logger.warning("llama-graph-patch: could not save compile artifacts to %s: %s", cache["path"], error)
        return
    logger.info("llama-graph-patch: saved %.1f MB of compile artifacts to %s", len(payload) / 2**20, cache["path"])


def write_file(path, header, payload):
    """Replace `path` by a header line and `payload`, whole or not at all. Call under the file's lock."""
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".artifacts.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(handle, "wb") as sink:
            sink.write(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
            sink.write(payload)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class FileLock(object):
    """An exclusive flock on `path` while the block runs (making its folder first); no lock where fcntl is
    missing (Windows), where the atomic rename alone keeps the file whole."""

    def __init__(self, path):
        self.path = path
        self.handle = None

    def __enter__(self):
        make_folder(os.path.dirname(self.path))
        try:
            import fcntl  # POSIX only
        except ImportError:
            return self
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
        return False


# -- precompiled code: called without dynamo tracing -----------------------------------------------------
#
# torch.compile(fn).aot_compile(example_inputs) (torch 2.13 has it; without it, only the caches above) traces
# `fn` once for inputs like the example's and returns code that another process can load: the guards, the
# bytecode that calls the compiled graph, and inductor's compiled graph. The model is an argument (its weights
# enter the graph as inputs, as under torch.compile), so one artifact serves every checkpoint of the shape.
# Guards that name objects of this process (module ids) are dropped; the artifact's key stands for them.


def can_precompile(device):
    return device.type != "npu" and hasattr(torch.compiler, "load_compiled_function")


def rows_class(rows):
    """dynamo compiles apart for one row (it specialises sizes 0 and 1)."""
    return "1" if rows == 1 else "2+"


class Precompiled(object):
    """The phases of one compiled model compiled ahead, per batch-size class: loaded from compile/precompiled/
    on the first call of a class, called wherever their guards accept a call. With `store`
    (LLAMA_GRAPH_PATCH_PRECOMPILE=store, as `warm` runs) a call no loaded code accepts is compiled ahead and
    the file written after the generate call; else that call goes to `fallback`, dynamo's usual compile.
    Registers itself in `cache` (the artifact file's record), whose "state" becomes "precompiled" once loaded
    code served a call."""

    def __init__(self, model, key, options, fallback, store, cache):
        self.model = model
        self.key = key
        self.options = options
        self.fallback = fallback
        self.store = store
        self.cache = cache
        self.classes = {}  # batch-size class: {"path", "key", "entries": [(meta, code)], "changed", "last"}
        self.warned = False
        self.before_trace = lambda kwargs: None  # what a trace of this call needs first (Regions sets it)
        cache["precompiled"] = self
        cache["load_s"] = 0.0

    def __call__(self, *args, **kwargs):
        fed = kwargs.get("input_ids")
        fed = kwargs.get("inputs_embeds") if fed is None else fed
        held = self.phases(rows_class(fed.shape[0]) if fed is not None else "1")
        # the entry that served the last call first: a decode step checks one entry's guards, not every one
        for meta, code in sorted(held["entries"], key=lambda entry: entry[0] is not held["last"]):
            if code.guard_check(self.model, *args, **kwargs):
                if meta.get("loaded"):
                    self.cache["state"] = "precompiled"
                held["last"] = meta
                return code(self.model, *args, **kwargs)
        self.before_trace(kwargs)
        if self.store:
            try:
                code = self.compile(held, args, kwargs)
            except Exception as error:
                self.store = False
                first_line = (str(error).strip().splitlines() or [""])[0]
                logger.warning(
                    "llama-graph-patch: could not precompile %s (%s: %s); compiling as usual, and nothing is stored "
                    "for it",
                    type(self.model).__name__,
                    type(error).__name__,
                    first_line,
                )
                return self.fallback(*args, **kwargs)
            return code(self.model, *args, **kwargs)
        if held["entries"] and not self.warned:
            self.warned = True
            logger.warning(
                "llama-graph-patch: no precompiled code in %s fits this call (%s); compiling it as usual",
                held["path"],
                "; ".join(rejection(code, self.model, args, kwargs) for _, code in held["entries"]),
            )
        return self.fallback(*args, **kwargs)

    def phases(self, batch):
        if batch not in self.classes:
            key = dict(self.key, rows=batch)
            path = os.path.join(compile_folder(), "precompiled", key_digest(key) + ".bin")
            self.classes[batch] = {"path": path, "key": key, "entries": [], "changed": False, "last": None}
            if os.path.exists(path):
                started = time.perf_counter()
                try:
                    self.classes[batch]["entries"] = load_precompiled(path, key, self.model)
                except Exception as error:  # whatever is wrong with the file, compiling as usual is right
                    logger.warning(
                        "llama-graph-patch: not using the precompiled code in %s (%s); compiling as usual",
                        path,
                        error,
                    )
                self.cache["load_s"] += time.perf_counter() - started
        return self.classes[batch]

    def compile(self, held, args, kwargs):
        """Trace and compile this call pattern ahead; every dimension may vary, as under dynamic=True (which
        aot_compile alone does not give the tensors nested in past_key_values: torch 2.13 keeps them static)."""
        for leaf in _pytree.tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                fixed = getattr(leaf, "_dynamo_static_indices", set())
                for dim in range(leaf.dim()):
                    if dim not in fixed:
                        torch._dynamo.maybe_mark_dynamic(leaf, dim)
        started = time.perf_counter()
        forward = torch.compile(type(self.model).forward, dynamic=True, fullgraph=True, **self.options)
        # Python floats (RMSNorm's epsilon) as constants: aot_compile cannot restart a trace to make them tensors.
        with torch._dynamo.config.patch(specialize_float=True):
            code = forward.aot_compile(((self.model,) + tuple(args), kwargs))
        fed = kwargs.get("input_ids")
        phase = "prefill" if kwargs.get("past_key_values") is None or fed is None or fed.shape[-1] > 1 else "decode"
        meta = {"phase": phase, "compile_s": round(time.perf_counter() - started, 3)}
        held["entries"].append((meta, code))
        held["changed"] = True
        return code

    def save(self):
        """Write the classes that gained code, atomically and under a lock. A failure is a WARNING."""
        for held in self.classes.values():
            if not held["changed"]:
                continue
            try:
                size = save_precompiled(held["path"], held["key"], held["entries"], self.model)
            except Exception as error:
                logger.warning("llama-graph-patch: could not save precompiled code to %s: %s", held["path"], error)
                continue
            held["changed"] = False
            logger.info(
                "llama-graph-patch: saved %d precompiled phases (%s), %.1f MB, to %s",
                len(held["entries"]),
                ", ".join(meta["phase"] for meta, _ in held["entries"]),
                size / 2**20,
                held["path"],
            )


def rejection(code, model, args, kwargs):
    """The first guard of `code` that this call fails, as dynamo words it."""
    f_locals = code.prepare_f_locals(model, *args, **kwargs)
    failed = code._artifacts.guard_manager.check_verbose(f_locals).verbose_code_parts
    return failed[0] if failed else "a guard failed"


def save_precompiled(path, key, entries, model):
    """One file for the phases of a batch-size class: the header lists them, their bytes follow."""
    metas, blobs = [], []
    for meta, code in entries:
        blob = code.serialize(code).serialized_data
        meta = dict(meta, size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), modules=installed_modules(code, model))
        meta.pop("loaded", None)
        metas.append(meta)
        blobs.append(blob)
    header = {"format": PRECOMPILED_FORMAT, "key": key, "entries": metas}
    with FileLock(path + ".lock"):
        write_file(path, header, b"".join(blobs))
    return sum(len(blob) for blob in blobs)


def installed_modules(code, model):
    """The module objects dynamo installed as globals of the traced function (`___module_collections_..._c0`):
    their names are this process's, so a loading process is given them by module name."""
    scope = type(model).forward.__globals__
    env = code._artifacts.runtime_env
    modules = {}
    for name in sorted(env.external_refs):
        if name in env.used_globals or name in env.import_sources or name == code._artifacts.backend_id:
            continue
        value = scope.get(name)
        if isinstance(value, types.ModuleType) and name.startswith("___"):
            modules[name] = value.__name__
        elif name not in scope:
            raise ValueError("the compiled code refers to %s, which no module provides" % name)
    return modules


def load_precompiled(path, key, model):
    """The phases in `path`, each after checking its checksum; any fault raises."""
    header, payload = read_file(path, PRECOMPILED_FORMAT, key)
    entries, offset = [], 0
    for meta in header.get("entries") or ():
        blob = payload[offset : offset + meta["size"]]
        offset += meta["size"]
        if len(blob) != meta["size"] or hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            raise ValueError("damaged: the bytes of its %s phase do not match the checksum in its header" % meta["phase"])
        scope = dict(type(model).forward.__globals__)
        for name, module in meta["modules"].items():
            __import__(module)
            scope[name] = sys.modules[module]
        code = torch.compiler.load_compiled_function(io.BytesIO(blob), f_globals=scope)
        code.disable_guard_check()  # Precompiled checks the guards itself, once per call
        entries.append((dict(meta, loaded=True), code))
    if not entries or offset != len(payload):
        raise ValueError("damaged: its header and its bytes disagree")
    return entries


# -- torchair on an NPU: cache_compile -------------------------------------------------------------------
#
# torchair.inference.cache_compile(method, config=, dynamic=, cache_dir=, ...) wraps a method of an
# nn.Module: its first call compiles and saves into cache_dir, or loads what an earlier process saved there,
# and later calls run that graph without dynamo and without checking guards. So each phase (and batch-size
# class) is a method of its own, with a folder of its own under compile/torchair/.


def torchair_caches():
    """Whether the installed torchair has cache_compile (torchair.inference, torch_npu 2.1 and later)."""
    try:
        import torchair.inference
    except ImportError:
        return False
    return hasattr(torchair.inference, "cache_compile")


class GenerationPhases(torch.nn.Module):
    """The model's forward as two methods, one per phase, for cache_compile (which takes methods only)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def prefill(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class TorchairPhases(object):
    """The model's calls, each sent to torchair's cache_compile of its phase and batch-size class."""

    def __init__(self, model, config, key):
        self.phases = GenerationPhases(model)
        self.config = config
        self.folder = os.path.join(compile_folder(), "torchair", key_digest(key))
        self.calls = {}

    def __call__(self, *args, **kwargs):
        ids = kwargs.get("input_ids")
        past = kwargs.get("past_key_values")
        phase = "prefill" if past is None or ids is None or ids.shape[-1] > 1 else "decode"
        batch = rows_class(ids.shape[0]) if ids is not None else "1"
        if (phase, batch) not in self.calls:
            self.calls[phase, batch] = self.cached(phase, batch)
        return self.calls[phase, batch](*args, **kwargs)

    def cached(self, phase, batch):
        import torchair

        folder = os.path.join(self.folder, "%s-batch-%s" % (phase, batch))
        refused = untrusted(folder)
        if refused:
            logger.warning(
                "llama-graph-patch: not using torchair's compile cache in %s: %s; compiling without it", folder, refused
            )
            backend = torchair.get_npu_backend(compiler_config=self.config)
            return torch.compile(getattr(self.phases, phase), dynamic=True, fullgraph=True, backend=backend)
        make_folder(folder)
        return torchair.inference.cache_compile(getattr(self.phases, phase), config=self.config, dynamic=True, cache_dir=folder)
