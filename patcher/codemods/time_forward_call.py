"""Codemod: put timing points around the model call inside the generation loop of decoding methods."""

from __future__ import annotations

from typing import Sequence

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext

from patcher.codemods.base import GenerationLoopCommand, function_body, insert_after, insert_before

# `outputs = self(**model_inputs, ...)`, the one forward pass of each generation step.
FORWARD_CALL = m.SimpleStatementLine(
    body=[m.Assign(targets=[m.AssignTarget(target=m.Name("outputs"))], value=m.Call(func=m.Name("self")))]
)


def runs_forward(statement: cst.BaseStatement) -> bool:
    """The loop's statement that runs the forward pass: the call itself, or an if/else holding it (from
    transformers 4.38 beam search picks between one call and calls on sub-batches, its low_memory option)."""
    return m.matches(statement, FORWARD_CALL) or (isinstance(statement, cst.If) and bool(m.findall(statement, FORWARD_CALL)))


class TimeForwardCallCommand(GenerationLoopCommand):
    """Copy `before_forward` / `after_forward` around the forward call (or the if/else holding it) and
    `after_loop` after the loop, in each named method.

    Before::

            while True:
                model_inputs = self.prepare_inputs_for_generation(input_ids, **model_kwargs)

                # forward pass to get next token
                outputs = self(**model_inputs, return_dict=True)
                ...
            if streamer is not None:

    After::

            while True:
                model_inputs = self.prepare_inputs_for_generation(input_ids, **model_kwargs)

                # forward pass to get next token
                if _llama_graph_patch_timer is not None:
                    _llama_graph_patch_timer.start()
                outputs = self(**model_inputs, return_dict=True)
                if _llama_graph_patch_timer is not None:
                    _llama_graph_patch_timer.stop(model_inputs)
                ...
            _llama_graph_patch.finish(self, _llama_graph_patch_timer)
            if streamer is not None:

    The call, or one if/else holding it, must appear exactly once at the top level of the loop body.
    """

    def __init__(self, context: CodemodContext, snippet: cst.Module, methods: Sequence[str]) -> None:
        super().__init__(context, methods)
        self.before = function_body(snippet, "before_forward")
        self.after = function_body(snippet, "after_forward")
        self.after_loop = function_body(snippet, "after_loop")

    def edit_loop(
        self, where: str, method: str, body: list[cst.BaseStatement], index: int
    ) -> list[cst.BaseStatement]:
        loop = body[index]
        steps = list(loop.body.body)
        calls = [i for i, statement in enumerate(steps) if runs_forward(statement)]
        self.require_once(f"`outputs = self(...)` at the top level of the loop (or in an if/else there) in {where}", len(calls))
        steps = insert_before(insert_after(steps, calls[0], self.after), calls[0], self.before)
        body[index] = loop.with_changes(body=loop.body.with_changes(body=steps))
        return insert_after(body, index, self.after_loop)
