"""Precompiled code: compiled ahead, stored in the compile cache, called later without dynamo tracing.

torch.compile(fn).aot_compile(example_inputs) (torch 2.13 has it; without it, only torch's caches) traces
`fn` once for inputs like the example's and returns code that another process can load: the guards, the
bytecode that calls the compiled graph, and inductor's compiled graph. The model is an argument (its weights
enter the graph as inputs, as under torch.compile), so one artifact serves every checkpoint of the shape.
Guards that name objects of this process (module ids) are dropped; the artifact's key stands for them.
"""

import hashlib
import io
import logging
import os
import sys
import time
import types

import torch
from torch.utils import _pytree

from . import files
from .calls import first_line, phase, rows_class
from .compile_cache import compile_folder, key_digest

logger = logging.getLogger("llama_graph_patch")

PRECOMPILED_FORMAT = "llama-graph-patch precompiled code 1"


def can_precompile(device):
    return device.type != "npu" and hasattr(torch.compiler, "load_compiled_function")


class Phases(object):
    """The precompiled phases of one batch-size class, and the file that keeps them."""

    def __init__(self, path, key):
        self.path = path
        self.key = key
        self.entries = []  # (meta, code): meta has "phase", "compile_s" and, once loaded, "loaded"
        self.changed = False  # gained a phase since it was loaded
        self.last = None  # the meta of the entry that served the last call


class Precompiled(object):
    """The phases of one compiled model compiled ahead, per batch-size class: loaded from compile/precompiled/
    on the first call of a class, called wherever their guards accept a call. With `store`
    (LLAMA_GRAPH_PATCH_PRECOMPILE=store, as `warm` runs) a call no loaded code accepts is compiled ahead and
    the file written after the generate call; else that call goes to `fallback`, dynamo's usual compile.
    `cache`, the compile cache file of this compiled model, learns when stored code served a call."""

    def __init__(self, model, options, fallback, store, cache):
        self.model = model
        self.options = options
        self.fallback = fallback
        self.store = store
        self.cache = cache
        self.classes = {}  # batch-size class -> Phases
        self.warned = False
        self.before_trace = lambda kwargs: None  # what a trace of this call needs first (the region scope sets it)

    def __call__(self, *args, **kwargs):
        held = self.phases(rows_class(kwargs))
        # the entry that served the last call first: a decode step checks one entry's guards, not every one
        for meta, code in sorted(held.entries, key=lambda entry: entry[0] is not held.last):
            if code.guard_check(self.model, *args, **kwargs):
                if meta.get("loaded"):
                    self.cache.state = "precompiled"
                held.last = meta
                return code(self.model, *args, **kwargs)
        self.before_trace(kwargs)
        if self.store:
            try:
                code = self.compile(held, args, kwargs)
            except Exception as error:
                self.store = False
                logger.warning(
                    "llama-graph-patch: could not precompile %s (%s); compiling as usual, and nothing is stored for it",
                    type(self.model).__name__,
                    first_line(error),
                )
                return self.fallback(*args, **kwargs)
            return code(self.model, *args, **kwargs)
        if held.entries and not self.warned:
            self.warned = True
            logger.warning(
                "llama-graph-patch: no precompiled code in %s fits this call (%s); compiling it as usual",
                held.path,
                "; ".join(rejection(code, self.model, args, kwargs) for _, code in held.entries),
            )
        return self.fallback(*args, **kwargs)

    def phases(self, rows):
        if rows not in self.classes:
            key = dict(self.cache.key, rows=rows)
            path = os.path.join(compile_folder(self.cache.folder), "precompiled", key_digest(key) + ".bin")
            held = self.classes[rows] = Phases(path, key)
            if os.path.exists(held.path):
                started = time.perf_counter()
                try:
                    held.entries = load_precompiled(held, self.cache.folder, self.model)
                except Exception as error:  # whatever is wrong with the file, compiling as usual is right
                    logger.warning(
                        "llama-graph-patch: not using the precompiled code in %s (%s); compiling as usual", held.path, error
                    )
                self.cache.load_s += time.perf_counter() - started
        return self.classes[rows]

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
        # Never frozen: the code serves every checkpoint of the shape (and aot_compile takes no frozen graph).
        with torch._dynamo.config.patch(specialize_float=True), torch._inductor.config.patch(freezing=False):
            code = forward.aot_compile(((self.model,) + tuple(args), kwargs))
        meta = {"phase": phase(kwargs), "compile_s": round(time.perf_counter() - started, 3)}
        held.entries.append((meta, code))
        held.changed = True
        return code

    def save(self):
        """Write the classes that gained code, whole and under a lock. A failure is a WARNING."""
        for held in self.classes.values():
            if not held.changed:
                continue
            try:
                size = save_precompiled(held, self.model)
            except Exception as error:
                logger.warning("llama-graph-patch: could not save precompiled code to %s: %s", held.path, error)
                continue
            held.changed = False
            logger.info(
                "llama-graph-patch: saved %d precompiled phases (%s), %.1f MB, to %s",
                len(held.entries),
                ", ".join(meta["phase"] for meta, _ in held.entries),
                size / 2**20,
                held.path,
            )


def rejection(code, model, args, kwargs):
    """The first guard of `code` that this call fails, as dynamo words it."""
    f_locals = code.prepare_f_locals(model, *args, **kwargs)
    failed = code._artifacts.guard_manager.check_verbose(f_locals).verbose_code_parts
    return failed[0] if failed else "a guard failed"


def save_precompiled(held, model):
    """One file for the phases of a batch-size class: the header lists them, their bytes follow."""
    metas, blobs = [], []
    for meta, code in held.entries:
        blob = code.serialize(code).serialized_data
        meta = dict(meta, size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), modules=installed_modules(code, model))
        meta.pop("loaded", None)
        metas.append(meta)
        blobs.append(blob)
    files.write_file(held.path, {"format": PRECOMPILED_FORMAT, "key": held.key, "entries": metas}, b"".join(blobs))
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


def load_precompiled(held, cache_folder, model):
    """The phases in `held`'s file, each after checking its checksum; any fault raises."""
    header, payload = files.read_file(held.path, cache_folder, PRECOMPILED_FORMAT, held.key)
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
