"""Codemod: insert statements right before the generation loop of GenerationMixin.greedy_search."""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.codemods.base import PlacedCommand, function_body, insert_before, loop_index

GREEDY_SEARCH = "GenerationMixin.greedy_search"


class InsertBeforeGenerationLoopCommand(PlacedCommand):
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
        self.paths = {("GenerationMixin", "greedy_search")}
        self.expected = [GREEDY_SEARCH]

    def edit_function(self, scope: tuple[str, ...], node: cst.FunctionDef) -> cst.FunctionDef:
        if scope != ("GenerationMixin",) or node.name.value != "greedy_search":
            return node
        self.found(GREEDY_SEARCH)
        body = node.body.body
        index = loop_index(body, f"a top-level `while True:` in {GREEDY_SEARCH}", self)
        return node.with_changes(body=node.body.with_changes(body=insert_before(body, index, self.statements)))
