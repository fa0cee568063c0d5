"""Codemod: insert statements right before the generation loop of GenerationMixin.greedy_search."""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.codemods.base import GenerationLoopCommand, function_body, insert_before


class InsertBeforeGenerationLoopCommand(GenerationLoopCommand):
    """Copy the snippet's `before_loop` body in front of greedy_search's top-level `while True:`.

    Before::

        class GenerationMixin:
            def greedy_search(self, input_ids, ...):
                ...
                this_peer_finished = False  # used by synced_gpus only
                while True:
                    ...

    After (snippet body: `self = _llama_graph_patch_compile(self, input_ids)`)::

        class GenerationMixin:
            def greedy_search(self, input_ids, ...):
                ...
                this_peer_finished = False  # used by synced_gpus only
                self = _llama_graph_patch_compile(self, input_ids)
                while True:
                    ...

    greedy_search must exist once in GenerationMixin, with exactly one top-level `while True:`.
    """

    DESCRIPTION = "Insert statements before the generation loop of greedy_search."

    def __init__(self, context: CodemodContext, snippet: cst.Module) -> None:
        super().__init__(context)
        self.statements = function_body(snippet, "before_loop")

    def edit_loop(self, body: list[cst.BaseStatement], index: int) -> list[cst.BaseStatement]:
        return insert_before(body, index, self.statements)
