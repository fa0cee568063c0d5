"""Codemod: add a snippet file's import statements to the end of a module's own imports."""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext, VisitorBasedCodemodCommand

from patcher.codemods.base import bound_names, without_docstring
from patcher.errors import UnexpectedCode

IMPORT_LINE = m.SimpleStatementLine(body=[m.OneOf(m.Import(), m.ImportFrom())])


class InsertImportsCommand(VisitorBasedCodemodCommand):
    """Copy the snippet's import statements right after the last import at the top of the module.

    Before (module)::

        import torch

        from .configuration_utils import GenerationConfig

        logger = logging.get_logger(__name__)

    Snippet::

        \"\"\"The import the patch adds.\"\"\"

        from . import _llama_graph_patch  # added by llama-graph-patch

    After::

        import torch

        from .configuration_utils import GenerationConfig
        from . import _llama_graph_patch  # added by llama-graph-patch

        logger = logging.get_logger(__name__)

    The module's imports are the import lines that open it (after its docstring); the first other
    statement ends them. Refuses a module that opens with no import, and one that already binds a name the
    snippet imports: the patch is already there, or the import would shadow the module's own name.
    """

    def __init__(self, context: CodemodContext, snippet: cst.Module) -> None:
        super().__init__(context)
        self.statements = [statement.with_changes(leading_lines=()) for statement in without_docstring(snippet.body)]

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        where = self.context.filename or "the module"
        body = list(tree.body)
        start = len(body) - len(without_docstring(body))
        end = start
        while end < len(body) and m.matches(body[end], IMPORT_LINE):
            end += 1
        if end == start:
            raise UnexpectedCode(f"{where}: no import statements at its top; expected some, so the patch refuses to guess")
        taken = sorted(bound_names(tree.body) & bound_names(self.statements))
        if taken:
            raise UnexpectedCode(
                f"{where} already binds {', '.join(taken)}: it holds llama-graph-patch code without a record of it; "
                "reinstall transformers, then apply again"
            )
        return tree.with_changes(body=(*body[:end], *self.statements, *body[end:]))
