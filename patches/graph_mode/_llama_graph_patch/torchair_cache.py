"""torchair's own compile cache on an NPU: cache_compile, one per phase and batch-size class.

torchair.inference.cache_compile(method, config=, dynamic=, cache_dir=, ...) wraps a method of an
nn.Module: its first call compiles and saves into cache_dir, or loads what an earlier process saved there,
and later calls run that graph without dynamo and without checking guards. So each phase (and batch-size
class) is a method of its own, with a folder of its own under compile/torchair/.
"""

import logging
import os

import torch

from . import files
from .calls import phase, rows_class
from .compile_cache import compile_folder, key_digest

logger = logging.getLogger("llama_graph_patch")


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

    def __init__(self, model, config, key, cache_folder):
        self.phases = GenerationPhases(model)
        self.config = config
        self.cache_folder = cache_folder
        self.folder = os.path.join(compile_folder(cache_folder), "torchair", key_digest(key))
        self.calls = {}

    def __call__(self, *args, **kwargs):
        which = (phase(kwargs), rows_class(kwargs))
        if which not in self.calls:
            self.calls[which] = self.cached(*which)
        return self.calls[which](*args, **kwargs)

    def cached(self, name, rows):
        import torchair

        folder = os.path.join(self.folder, "%s-batch-%s" % (name, rows))
        refused = files.untrusted(folder, self.cache_folder)
        if refused:
            logger.warning(
                "llama-graph-patch: not using torchair's compile cache in %s: %s; compiling without it", folder, refused
            )
            backend = torchair.get_npu_backend(compiler_config=self.config)
            return torch.compile(getattr(self.phases, name), dynamic=True, fullgraph=True, backend=backend)
        files.make_folder(folder)
        return torchair.inference.cache_compile(getattr(self.phases, name), config=self.config, dynamic=True, cache_dir=folder)
