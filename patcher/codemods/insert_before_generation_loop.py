"""Codemod: insert statements right before the generation loop of GenerationMixin's decoding methods."""

from __future__ import annotations

from typing import Sequence

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.codemods.base import GenerationLoopCommand, function_body, insert_before, with_method_name


class InsertBeforeGenerationLoopCommand(GenerationLoopCommand):
    """Copy the snippet's `before_loop` body in front of each named method's top-level generation loop,
    `method_name` in it replaced by the method's name.

    Before::

        class GenerationMixin:
            def sample(self, input_ids, ...):
                ...
                this_peer_finished = False  # used by synced_gpus only
                while True:
                    ...

    After (snippet body: `self = compile_model(self, input_ids, method_name)`)::

        class GenerationMixin:
            def sample(self, input_ids, ...):
                ...
                this_peer_finished = False  # used by synced_gpus only
                self = compile_model(self, input_ids, "sample")
                while True:
                    ...

    Each method must exist once in GenerationMixin, with exactly one top-level generation loop.
    """

    def __init__(self, context: CodemodContext, snippet: cst.Module, methods: Sequence[str]) -> None:
        super().__init__(context, methods)
        self.statements = function_body(snippet, "before_loop")

    def edit_loop(
        self, where: str, method: str, body: list[cst.BaseStatement], index: int
    ) -> list[cst.BaseStatement]:
        return insert_before(body, index, with_method_name(self.statements, method))
