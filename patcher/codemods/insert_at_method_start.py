"""Codemod: insert statements at the start of GenerationMixin's decoding methods."""

from __future__ import annotations

from typing import Sequence

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.codemods.base import GenerationMethodsCommand, function_body, with_method_name, without_docstring


class InsertAtMethodStartCommand(GenerationMethodsCommand):
    """Copy the snippet's `at_start` body to the start of each named method, after its docstring,
    `method_name` in it replaced by the method's name.

    Before::

        class GenerationMixin:
            def contrastive_search(self, input_ids, ...):
                r\"\"\"Generates sequences ...\"\"\"
                # init values
                logits_processor = ...

    After (snippet body: `say_eager(self, method_name)`)::

        class GenerationMixin:
            def contrastive_search(self, input_ids, ...):
                r\"\"\"Generates sequences ...\"\"\"
                say_eager(self, "contrastive_search")
                # init values
                logits_processor = ...

    Each method must exist once in GenerationMixin.
    """

    def __init__(self, context: CodemodContext, snippet: cst.Module, methods: Sequence[str]) -> None:
        super().__init__(context, methods)
        self.statements = function_body(snippet, "at_start")

    def edit_method(self, where: str, method: str, body: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
        start = len(body) - len(without_docstring(body))
        return [*body[:start], *with_method_name(self.statements, method), *body[start:]]
