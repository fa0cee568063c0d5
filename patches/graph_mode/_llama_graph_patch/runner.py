"""The model as one generate call's loop sees it: compiled, with the eager model as the fallback."""

import logging
from dataclasses import dataclass
from typing import Any

import torch

from .calls import contiguous_cache, first_line, model_inputs, phase, sizes_apart
from .compile_cache import save_compile_cache
from .frozen import freezing
from .gemv import one_row_matmuls

logger = logging.getLogger("llama_graph_patch")


@dataclass(frozen=True)
class Generation:
    """One generate call: the model, what the patch keeps on it (a ModelState), and the call's Settings."""

    model: Any
    state: Any
    settings: Any


class Runner(object):
    """Stands in for the model inside one generation loop: attributes are the model's, calls run the compiled
    model (`compiled`, a CompiledModel), or with EXE_MODE=eager (compiled None) the model itself.

    A call that torch does not compile (dynamo's recompile limit, LLAMA_GRAPH_PATCH_MAX_GRAPHS, any
    compile error) runs eager instead, and so does the rest of this generate call: the same tokens, one
    WARNING per model. LLAMA_GRAPH_PATCH_STRICT=1 raises instead.

    Its own names start with llama_graph_patch, apart from anything a model has: every other one is the model's.
    """

    def __init__(self, generation, compiled):
        self.llama_graph_patch = generation
        self.__compiled = compiled
        self.__eager = compiled is None
        self.__first = True
        self.__new_graphs = 0  # compiled during this generate call

    def __getattr__(self, name):
        return getattr(self.llama_graph_patch.model, name)

    def __call__(self, *args, **kwargs):
        model, state = self.llama_graph_patch.model, self.llama_graph_patch.state
        if self.__eager:
            return model(*args, **kwargs)
        stats = dynamo_stats()
        before = stats["unique_graphs"]
        try:
            if torch.is_inference_mode_enabled():
                # Tensors made under inference_mode carry other dispatch keys than those made under no_grad,
                # and dynamo would compile apart for them (pipeline() generates under inference_mode).
                with torch.inference_mode(False), torch.no_grad():
                    outputs = self.__call_compiled(*model_inputs(args, kwargs, ordinary=True))
            else:
                outputs = self.__call_compiled(*model_inputs(args, kwargs, ordinary=False))
        except Exception as error:
            if self.llama_graph_patch.settings.strict:
                raise
            self.__fall_back(error)
            return model(*args, **kwargs)
        finally:
            compiled = stats["unique_graphs"] - before
            self.__new_graphs += compiled
            state.graphs += compiled
        if self.__first:
            contiguous_cache(outputs)
            self.__first = False
        return outputs

    def llama_graph_patch_finish(self):
        """After the generation loop: keep what this call compiled in the compile cache."""
        if self.__new_graphs and self.__compiled.compile_cache is not None:
            save_compile_cache(self.__compiled.compile_cache)

    def __call_compiled(self, args, kwargs):
        for module in self.__compiled.sdpa_attention:
            module._use_sdpa = False
        try:
            frozen = self.__compiled.frozen and phase(kwargs) == "decode"
            with sizes_apart(), one_row_matmuls(), freezing(frozen, self.llama_graph_patch.state.device.type):
                return self.__call_within_budget(args, kwargs)
        finally:
            for module in self.__compiled.sdpa_attention:
                module._use_sdpa = True

    def __call_within_budget(self, args, kwargs):
        if self.llama_graph_patch.state.graphs < self.llama_graph_patch.settings.max_graphs:
            return self.__compiled.call(*args, **kwargs)
        if not hasattr(torch.compiler, "set_stance"):  # torch < 2.6: no way to run compiled without compiling
            raise RuntimeError("no graphs compiled beyond LLAMA_GRAPH_PATCH_MAX_GRAPHS on torch < 2.6")
        with torch.compiler.set_stance("fail_on_recompile"):  # the graphs it has, no new one
            return self.__compiled.call(*args, **kwargs)

    def __fall_back(self, error):
        self.__eager = True
        model, state, settings = self.llama_graph_patch.model, self.llama_graph_patch.state, self.llama_graph_patch.settings
        if state.graphs >= settings.max_graphs:
            cause = "it holds %d compiled graphs, LLAMA_GRAPH_PATCH_MAX_GRAPHS=%d" % (state.graphs, settings.max_graphs)
            fix = "raise LLAMA_GRAPH_PATCH_MAX_GRAPHS to compile more call patterns"
        elif "recompile" in type(error).__name__.lower() or "recompile_limit" in str(error):
            limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
            cause = "dynamo holds its limit of %d compiled versions (torch._dynamo.config.recompile_limit)" % limit
            fix = "raise torch._dynamo.config.recompile_limit, or vary batch sizes and modes less"
        else:
            cause = "torch.compile failed: %s" % first_line(error)
            fix = "set LLAMA_GRAPH_PATCH_STRICT=1 to raise the error, or EXE_MODE=eager"
        message = "llama-graph-patch: %s runs eager for the rest of this generate call: %s; %s" % (
            type(model).__name__, cause, fix
        )
        if state.warned_fallback:
            logger.info(message)
        else:
            state.warned_fallback = True
            logger.warning(message)


def dynamo_stats():
    """dynamo's running totals, unique_graphs among them: the graphs compiled so far in this process."""
    # Imported on the first compiled call, so that importing transformers does not load dynamo.
    from torch._dynamo.utils import counters

    return counters["stats"]
