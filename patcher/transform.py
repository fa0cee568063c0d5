"""Turn original file bytes into patched bytes: run the patches' codemods on the files they edit, copy
the modules they add. Pure: no I/O on the target, and the same input gives the same bytes wherever the
file lives."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.catalog import Edit, Patch
from patcher.codemods import COMMANDS
from patcher.codemods.base import load_snippet, snippet_bytes
from patcher.errors import UnexpectedCode


Methods = dict[str, tuple[str, ...]]  # decoding methods by kind of edit, as in patches/


def patch_file(
    relative: str, original: bytes, patches: list[Patch], version: str, shown_as: str | None = None
) -> tuple[bytes, dict[str, Methods]]:
    """Apply every edit the patches make to file `relative` (a path inside site-packages) of transformers
    `version`, which says where the decoding methods are: the patched bytes, and the decoding methods each
    patch edited. `shown_as` names the file in error messages (its full path); nothing of it enters the output.

    A release outside the patch's verified ranges is tried against each known layout of the methods, the
    newest first; the first layout whose every place is found exactly once wins, else the newest layout's
    refusal is raised.
    """
    shown_as = shown_as or relative
    try:
        tree = cst.parse_module(original)
    except cst.ParserSyntaxError as error:
        raise UnexpectedCode(f"{shown_as} is not valid Python ({error.message}, line {error.raw_line})") from None
    chosen = {}
    for patch in patches:
        edits = [edit for edit in patch.edits if edit.file == relative]
        refusals = []
        for methods in patch.method_layouts(version):
            try:
                tree = apply_edits(tree, edits, methods, shown_as)
                chosen[patch.name] = methods
                break
            except UnexpectedCode as refusal:
                refusals.append(refusal)
        else:
            raise refusals[0]
    return tree.bytes, chosen


def apply_edits(tree: cst.Module, edits: list[Edit], methods: Methods, shown_as: str) -> cst.Module:
    for edit in edits:
        parameters = (methods[edit.methods],) if edit.methods else ()
        command = COMMANDS[edit.codemod](CodemodContext(filename=shown_as), load_snippet(edit.snippet), *parameters)
        # transform_module would first deep-copy the tree for metadata, which these codemods do not use:
        # 1.4 s per codemod on generation/utils.py.
        tree = command.transform_module_impl(tree)
    return tree


def patch_files(
    originals: dict[str, bytes | None], patches: list[Patch], version: str, site: Path | None = None
) -> tuple[dict[str, bytes | None], dict[str, Methods]]:
    """What every file in `originals` becomes (None: absent; a file the patches neither edit nor add
    comes back as it was), and the decoding methods each patch edited. An added module must be absent
    before. `site`, the site-packages the files come from, only names them in error messages."""
    edited = {edit.file for patch in patches for edit in patch.edits}
    sources = {addition.file: addition.source for patch in patches for addition in patch.adds}
    contents, methods = {}, {}
    for relative, source in originals.items():
        shown_as = str(site / relative) if site else relative
        if relative in sources:
            if source is not None:
                raise UnexpectedCode(
                    f"{shown_as} exists already, but transformers has no such file: the patch adds it and refuses to "
                    "overwrite it"
                )
            contents[relative] = snippet_bytes(sources[relative])
        elif relative in edited:
            contents[relative], chosen = patch_file(relative, source, patches, version, shown_as)
            for name, layout in chosen.items():
                methods[name] = {**methods.get(name, {}), **layout}
        else:
            contents[relative] = source
    return contents, methods
