"""Scope "layers": the decoder layer compiled once, its code serving every layer, and what the other scopes
share with it: finding the model's list of decoder layers and swapping it while a call runs."""

import torch
from torch.utils import _pytree


def module_lists(model):
    """The paths of the model's nn.ModuleLists: a Llama has one, its decoder layers."""
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]


def layers_are_indexed(model):
    """Whether the model's layers hold their own index (`layer_idx`, transformers 4.36 and later): dynamo then
    specialises on it, and the code compiled for one layer cannot serve the others."""
    indices = {getattr(module, "layer_idx", None) for module in model.modules()}
    return len(indices - {None}) > 1  # walks the modules: a generate call's cost, not a step's


class CompiledLayers(object):
    """Calls `model` with its decoder layers (its one nn.ModuleList) swapped for `replace(layer)` while the
    call runs, by default the layers compiled. Since dynamo takes a layer's weights as inputs, the code
    compiled for one layer serves them all. `call`: what to call instead of the model itself."""

    def __init__(self, model, replace, call=None):
        paths = module_lists(model)
        if len(paths) != 1:
            raise ValueError(
                "llama-graph-patch: LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers needs a model with one list of decoder "
                "layers; %s has %d (%s). Use LLAMA_GRAPH_PATCH_COMPILE_SCOPE=model"
                % (type(model).__name__, len(paths), ", ".join(paths) or "none")
            )
        self.model = model
        self.path = paths[0]
        self.call = model if call is None else call
        self.layers = model.get_submodule(self.path)
        self.originals = dict(self.layers._modules)  # what was compiled: a replaced layer shows against it
        self.compiled = {name: replace(layer) for name, layer in self.originals.items()}

    def is_current(self):
        """False once the model holds other layers than those compiled (a layer or the list replaced)."""
        return self.model.get_submodule(self.path) is self.layers and self.layers._modules == self.originals

    def __call__(self, *args, **kwargs):
        held = self.layers.__dict__["_modules"]
        self.layers.__dict__["_modules"] = self.compiled
        try:
            return self.call(*args, **kwargs)
        finally:
            self.layers.__dict__["_modules"] = held


class PoolCopies(object):
    """A decoder layer compiled with CUDA graphs. Every compiled call starts a new generation of inductor's
    cudagraph trees, so the next layer's replay of the same graph would overwrite this layer's outputs
    (its hidden states and keys and values) in the graph pool: copy them out, keep what aliases an input."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        inputs = {leaf.data_ptr() for leaf in _pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        return _pytree.tree_map(
            lambda leaf: leaf.clone() if isinstance(leaf, torch.Tensor) and leaf.data_ptr() not in inputs else leaf,
            self.compiled(*args, **kwargs),
        )
