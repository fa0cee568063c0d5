"""What the codemods share: reading snippet files, knowing where in the tree they are, and refusing
when a place they edit is not found exactly once."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from typing import Sequence

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext, VisitorBasedCodemodCommand

from patcher.errors import UnexpectedCode

# Names of methods a snippet adds (rather than edits) start with this.
NEW_MEMBER_PREFIX = "llama_graph_patch_"
# In a snippet for generation methods, this name stands for the edited method's name, as a string.
METHOD_NAME_PLACEHOLDER = "method_name"
# The generation loop of a decoding method: `while True:` (transformers < 4.39) or
# `while self._has_unfinished_sequences(...):` (4.39 and later).
GENERATION_LOOP = m.While(
    test=m.Name("True") | m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name("_has_unfinished_sequences")))
)


def snippet_bytes(relative: str) -> bytes:
    """A file shipped in the `patches` package, as bytes."""
    return resources.files("patches").joinpath(relative).read_bytes()


def load_snippet(relative: str) -> cst.Module:
    """Parse a snippet file shipped in the `patches` package."""
    return cst.parse_module(snippet_bytes(relative))


def without_docstring(body: Sequence[cst.BaseStatement]) -> list[cst.BaseStatement]:
    if body and m.matches(body[0], m.SimpleStatementLine(body=[m.Expr(value=m.SimpleString())])):
        return list(body[1:])
    return list(body)


def function_body(snippet: cst.Module, name: str) -> list[cst.BaseStatement]:
    """The statements of top-level function `name` in a snippet file."""
    for statement in snippet.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
            return without_docstring(statement.body.body)
    raise LookupError(f"snippet has no function {name}()")


def with_method_name(statements: Sequence[cst.BaseStatement], method: str) -> list[cst.BaseStatement]:
    """`statements` with every `method_name` replaced by the string literal of `method`."""

    class Substitute(cst.CSTTransformer):
        def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
            if updated_node.value == METHOD_NAME_PLACEHOLDER:
                return cst.SimpleString(f'"{method}"')
            return updated_node

    return [statement.visit(Substitute()) for statement in statements]


def snippet_methods(snippet: cst.Module) -> dict[str, list[cst.FunctionDef]]:
    """Methods of each top-level class in a snippet file, by class name."""
    return {
        statement.name.value: [member for member in statement.body.body if isinstance(member, cst.FunctionDef)]
        for statement in snippet.body
        if isinstance(statement, cst.ClassDef)
    }


def parameter_names(function: cst.FunctionDef) -> list[str]:
    params = function.params
    names = [p.name.value for p in (*params.posonly_params, *params.params)]
    if isinstance(params.star_arg, cst.Param):
        names.append("*" + params.star_arg.name.value)
    names += [p.name.value for p in params.kwonly_params]
    if params.star_kwarg is not None:
        names.append("**" + params.star_kwarg.name.value)
    return names


def defined_names(body: Sequence[cst.BaseStatement]) -> set[str]:
    """Names bound at the top level of a module or class body by def, class or plain assignment."""
    names = set()
    for statement in body:
        if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
            names.add(statement.name.value)
        elif isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Assign):
                    names.update(t.target.value for t in small.targets if isinstance(t.target, cst.Name))
    return names


def bound_names(body: Sequence[cst.BaseStatement]) -> set[str]:
    """defined_names, and the names that top-level import statements bind."""
    names = defined_names(body)
    for statement in body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, (cst.Import, cst.ImportFrom)) and not isinstance(small.names, cst.ImportStar):
                    names.update(imported_name(alias) for alias in small.names)
    return names


def imported_name(alias: cst.ImportAlias) -> str:
    """The name an import binds: `x` for `import x.y` and `from . import x`, `z` for `... as z`."""
    if alias.asname is not None:
        return alias.asname.name.value
    node = alias.name
    while isinstance(node, cst.Attribute):
        node = node.value
    return node.value


def spaced(statement: cst.BaseStatement, blank_lines: int) -> cst.BaseStatement:
    """`statement` with exactly `blank_lines` blank lines above its comments."""
    leading = list(statement.leading_lines)
    while leading and leading[0].comment is None:
        leading.pop(0)
    return statement.with_changes(leading_lines=(*[cst.EmptyLine()] * blank_lines, *leading))


def insert_before(
    body: Sequence[cst.BaseStatement], index: int, new: Sequence[cst.BaseStatement]
) -> list[cst.BaseStatement]:
    """Insert `new` before body[index]. The comments and blank lines above body[index] move above
    `new`, so they keep introducing the block they introduced."""
    body = list(body)
    anchor = body[index]
    first = new[0].with_changes(leading_lines=(*anchor.leading_lines, *new[0].leading_lines))
    body[index] = anchor.with_changes(leading_lines=())
    return [*body[:index], first, *new[1:], *body[index:]]


def insert_after(
    body: Sequence[cst.BaseStatement], index: int, new: Sequence[cst.BaseStatement]
) -> list[cst.BaseStatement]:
    """Insert `new` right after body[index]; what follows keeps its comments and blank lines."""
    body = list(body)
    return [*body[: index + 1], *new, *body[index + 1 :]]


class PlacedCommand(VisitorBasedCodemodCommand):
    """A codemod that edits named module-level classes and their methods, each found exactly once.

    Subclasses set `paths` (the class and method names they edit, such as ("GenerationMixin",
    "greedy_search")) and `expected` (the places that must each be found exactly once), and implement
    `edit_class` / `edit_function`, calling `self.found(place)` for every place they recognise. The
    traversal only walks down those paths: libcst visits a 4,000-line file in seconds otherwise.
    """

    def __init__(self, context: CodemodContext) -> None:
        super().__init__(context)
        self.paths: set[tuple[str, ...]] = set()
        self.expected: list[str] = []
        self.scope: list[str] = []
        self.counts: Counter[str] = Counter()

    def found(self, what: str) -> None:
        self.counts[what] += 1

    def require_once(self, what: str, count: int) -> None:
        if count != 1:
            problem = "not found" if count == 0 else f"found {count} times"
            raise UnexpectedCode(
                f"{self.context.filename or 'the file'}: {what} {problem}; expected exactly once, so the "
                "patch refuses to guess"
            )

    def on_visit(self, node: cst.CSTNode) -> bool:
        if not isinstance(node, (cst.Module, cst.IndentedBlock, cst.ClassDef, cst.FunctionDef)):
            return False  # statements and expressions never hold a place this codemod edits
        return super().on_visit(node)

    def _enter(self, name: str) -> bool:
        self.scope.append(name)
        depth = len(self.scope)
        return any(len(path) > depth and list(path[:depth]) == self.scope for path in self.paths)

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return self._enter(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self.scope.pop()
        return self.edit_class(tuple(self.scope), updated_node)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return self._enter(node.name.value)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        self.scope.pop()
        return self.edit_function(tuple(self.scope), updated_node)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        for what in self.expected:
            self.require_once(what, self.counts[what])
        return updated_node

    def edit_class(self, scope: tuple[str, ...], node: cst.ClassDef) -> cst.ClassDef:
        return node

    def edit_function(self, scope: tuple[str, ...], node: cst.FunctionDef) -> cst.FunctionDef:
        return node


class GenerationMethodsCommand(PlacedCommand):
    """A codemod that edits the named methods of GenerationMixin, each found exactly once."""

    def __init__(self, context: CodemodContext, methods: Sequence[str]) -> None:
        super().__init__(context)
        self.methods = tuple(methods)
        self.paths = {("GenerationMixin", method) for method in self.methods}
        self.expected = [f"GenerationMixin.{method}" for method in self.methods]

    def edit_function(self, scope: tuple[str, ...], node: cst.FunctionDef) -> cst.FunctionDef:
        if scope != ("GenerationMixin",) or node.name.value not in self.methods:
            return node
        where = f"GenerationMixin.{node.name.value}"
        self.found(where)
        body = self.edit_method(where, node.name.value, list(node.body.body))
        return node.with_changes(body=node.body.with_changes(body=body))

    def edit_method(self, where: str, method: str, body: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
        """The method's new body, given its old one."""
        raise NotImplementedError


class GenerationLoopCommand(GenerationMethodsCommand):
    """A codemod that edits decoding methods of GenerationMixin around their one top-level generation loop."""

    def edit_method(self, where: str, method: str, body: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
        loops = [i for i, statement in enumerate(body) if m.matches(statement, GENERATION_LOOP)]
        self.require_once(
            f"a top-level generation loop (`while True:` or `while self._has_unfinished_sequences(...)`) in {where}",
            len(loops),
        )
        return self.edit_loop(where, method, body, loops[0])

    def edit_loop(
        self, where: str, method: str, body: list[cst.BaseStatement], index: int
    ) -> list[cst.BaseStatement]:
        """The new method body, given the old one and the index of its loop."""
        raise NotImplementedError
