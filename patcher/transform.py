"""Turn original file bytes into patched bytes by running the patches' codemods. Pure: no I/O on the
target, and the same input gives the same bytes wherever the file lives."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
from libcst.codemod import CodemodContext

from patcher.catalog import Patch, files_of
from patcher.codemods import COMMANDS
from patcher.codemods.base import load_snippet
from patcher.errors import UnexpectedCode


def patch_file(relative: str, original: bytes, patches: list[Patch], shown_as: str | None = None) -> bytes:
    """Apply every edit the patches make to file `relative` (a path inside site-packages).

    `shown_as` names the file in error messages (its full path); nothing of it enters the output.
    """
    shown_as = shown_as or relative
    try:
        tree = cst.parse_module(original)
    except cst.ParserSyntaxError as error:
        raise UnexpectedCode(f"{shown_as} is not valid Python ({error.message}, line {error.raw_line})") from None
    for patch in patches:
        for edit in patch.edits:
            if edit.file == relative:
                parameters = (edit.methods,) if edit.methods else ()
                command = COMMANDS[edit.codemod](CodemodContext(filename=shown_as), load_snippet(edit.snippet), *parameters)
                # transform_module would first deep-copy the tree for metadata, which these codemods
                # do not use: 1.4 s per codemod on generation/utils.py.
                tree = command.transform_module_impl(tree)
    return tree.bytes


def patch_files(originals: dict[str, bytes], patches: list[Patch], site: Path | None = None) -> dict[str, bytes]:
    """Patched bytes for every file in `originals`; files the patches do not edit come back unchanged.

    `site`, the site-packages the files come from, only names them in error messages.
    """
    edited = set(files_of(patches))
    return {
        relative: patch_file(relative, source, patches, str(site / relative) if site else None)
        if relative in edited
        else source
        for relative, source in originals.items()
    }
