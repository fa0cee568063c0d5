"""The patches of patches/__init__.py as typed values, with their dependencies resolved."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet


@dataclass(frozen=True)
class Edit:
    file: str  # path inside site-packages, e.g. transformers/generation/utils.py
    codemod: str  # a key of patcher.codemods.COMMANDS
    snippet: str  # a file inside patches/
    methods: tuple[str, ...] = ()  # the GenerationMixin methods a generation codemod edits


@dataclass(frozen=True)
class Patch:
    name: str
    summary: str
    supported: SpecifierSet  # transformers versions the snippets were written against
    requires: tuple[str, ...]
    methods: dict[str, tuple[str, ...]]  # what the patch does with generate()'s decoding methods, by kind
    edits: tuple[Edit, ...]


def load_catalog() -> dict[str, Patch]:
    """Every patch, in the catalogue's order (which is also the order their edits run in)."""
    entries = importlib.import_module("patches").PATCHES
    return {
        entry["name"]: Patch(
            name=entry["name"],
            summary=entry["summary"],
            supported=SpecifierSet(entry["transformers"]),
            requires=tuple(entry["requires"]),
            methods=dict(entry["methods"]),
            edits=tuple(Edit(*edit) for edit in entry["edits"]),
        )
        for entry in entries
    }


def patch_names(static_cache: bool) -> list[str]:
    """What `apply` installs and `bench` needs: the graph-mode block, plus the static cache when asked."""
    return ["graph-mode", "static-cache"] if static_cache else ["graph-mode"]


def resolve(names: list[str]) -> list[Patch]:
    """The named patches plus what they require, in catalogue order."""
    catalog = load_catalog()
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(catalog[name].requires)
    return [patch for name, patch in catalog.items() if name in wanted]


def files_of(patches: list[Patch]) -> list[str]:
    """The files a set of patches edits, in the order they first appear."""
    return list(dict.fromkeys(edit.file for patch in patches for edit in patch.edits))
