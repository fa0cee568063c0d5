"""Codemod: append a snippet file's definitions to the end of a module."""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodContext, VisitorBasedCodemodCommand

from patcher.codemods.base import defined_names, spaced, without_docstring
from patcher.errors import UnexpectedCode


class AppendDefinitionsCommand(VisitorBasedCodemodCommand):
    """Append every statement of a snippet file, except its docstring, to the end of the module.

    Before (module)::

        import torch

        def greedy_search(self):
            ...

    Snippet::

        \"\"\"Helpers.\"\"\"

        # Added by llama-graph-patch
        def _llama_graph_patch_compile(model, input_ids):
            ...

    After::

        import torch

        def greedy_search(self):
            ...


        # Added by llama-graph-patch
        def _llama_graph_patch_compile(model, input_ids):
            ...

    Refuses when the module already binds a name the snippet defines: the patch is already there, or
    the helper would shadow the module's own code.
    """

    DESCRIPTION = "Append helper definitions to the end of a module."

    def __init__(self, context: CodemodContext, snippet: cst.Module) -> None:
        super().__init__(context)
        statements = without_docstring(snippet.body)
        self.statements = [spaced(statements[0], 2), *statements[1:]]

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        # Only the module's top level matters: no need to walk the tree.
        taken = sorted(defined_names(tree.body) & defined_names(self.statements))
        if taken:
            raise UnexpectedCode(
                f"{self.context.filename or 'the module'} already defines {', '.join(taken)}: it holds "
                "llama-graph-patch code without a record of it; reinstall transformers, then apply again"
            )
        return tree.with_changes(body=(*tree.body, *self.statements))
