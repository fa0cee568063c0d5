"""Codemod: put statements at the top of existing methods, such as a dispatch to a patched path."""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.codemods.base import (
    NEW_MEMBER_PREFIX,
    PlacedCommand,
    insert_before,
    parameter_names,
    snippet_methods,
    without_docstring,
)


class PrependToMethodsCommand(PlacedCommand):
    """For each method of each class in the snippet file (other than new `llama_graph_patch_*` ones),
    copy its body to the top of the same method of the same module-level class, after any docstring.

    Before::

        class LlamaAttention(nn.Module):
            def forward(self, hidden_states, past_key_value=None):
                bsz, q_len, _ = hidden_states.size()

    Snippet::

        class LlamaAttention:
            def forward(self, hidden_states, past_key_value=None):
                if isinstance(past_key_value, static_cache.StaticLayer):
                    return static_cache.attention_forward(self, hidden_states, past_key_value)

    After::

        class LlamaAttention(nn.Module):
            def forward(self, hidden_states, past_key_value=None):
                if isinstance(past_key_value, static_cache.StaticLayer):
                    return static_cache.attention_forward(self, hidden_states, past_key_value)
                bsz, q_len, _ = hidden_states.size()

    The snippet repeats each target's parameter list; a target whose parameter names differ is
    refused, since the copied statements use those names.
    """

    def __init__(self, context: CodemodContext, snippet: cst.Module) -> None:
        super().__init__(context)
        self.methods = {
            (cls, method.name.value): method
            for cls, methods in snippet_methods(snippet).items()
            for method in methods
            if not method.name.value.startswith(NEW_MEMBER_PREFIX)
        }
        self.paths = set(self.methods)
        self.expected = [f"{cls}.{name}" for cls, name in self.methods]

    def edit_function(self, scope: tuple[str, ...], node: cst.FunctionDef) -> cst.FunctionDef:
        snippet = self.methods.get((scope[0], node.name.value)) if len(scope) == 1 else None
        if snippet is None:
            return node
        where = f"{scope[0]}.{node.name.value}"
        self.found(where)
        if parameter_names(node) != parameter_names(snippet):
            self.require_once(f"{where} with parameters ({', '.join(parameter_names(snippet))})", 0)
        body = list(node.body.body)
        docstring = len(body) - len(without_docstring(body))
        new = without_docstring(snippet.body.body)
        return node.with_changes(body=node.body.with_changes(body=insert_before(body, docstring, new)))
