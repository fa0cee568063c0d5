"""Codemod: add new methods to existing classes."""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.codemods.base import NEW_MEMBER_PREFIX, PlacedCommand, defined_names, snippet_methods, spaced


class AddMethodsCommand(PlacedCommand):
    """Append the snippet's `llama_graph_patch_*` methods to the module-level class of the same name.

    Before::

        class LlamaForCausalLM(LlamaPreTrainedModel):
            def get_decoder(self):
                return self.model

    Snippet::

        class LlamaForCausalLM:
            def llama_graph_patch_kv_cache(self, batch_size, max_length, device):
                return _llama_graph_patch_kv_cache.make(self, batch_size, max_length, device)

    After::

        class LlamaForCausalLM(LlamaPreTrainedModel):
            def get_decoder(self):
                return self.model

            def llama_graph_patch_kv_cache(self, batch_size, max_length, device):
                return _llama_graph_patch_kv_cache.make(self, batch_size, max_length, device)

    Refuses when the class already has a member of that name.
    """

    def __init__(self, context: CodemodContext, snippet: cst.Module) -> None:
        super().__init__(context)
        self.additions = {
            cls: [method for method in methods if method.name.value.startswith(NEW_MEMBER_PREFIX)]
            for cls, methods in snippet_methods(snippet).items()
        }
        self.additions = {cls: methods for cls, methods in self.additions.items() if methods}
        self.paths = {(cls,) for cls in self.additions}
        self.expected = [f"class {cls}" for cls in self.additions]

    def edit_class(self, scope: tuple[str, ...], node: cst.ClassDef) -> cst.ClassDef:
        methods = self.additions.get(node.name.value) if not scope else None
        if methods is None:
            return node
        self.found(f"class {node.name.value}")
        body = list(node.body.body)
        taken = sorted(defined_names(body) & {method.name.value for method in methods})
        if taken:
            self.require_once(f"class {node.name.value} without a member {', '.join(taken)}", 0)
        return node.with_changes(body=node.body.with_changes(body=[*body, *(spaced(method, 1) for method in methods)]))
