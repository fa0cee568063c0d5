"""The patches of patches/__init__.py as typed values, with their dependencies resolved."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import resources

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Edit:
    file: str  # path inside site-packages, e.g. transformers/generation/utils.py
    codemod: str  # a key of patcher.codemods.COMMANDS
    snippet: str  # a file inside patches/
    methods: str = ""  # for a generation codemod: which of the patch's decoding methods, e.g. "compiled"


@dataclass(frozen=True)
class Addition:
    file: str  # path inside site-packages of a module the patch adds, e.g. transformers/generation/_llama_graph_patch/state.py
    source: str  # the file inside patches/ copied there byte for byte
    package: str = ""  # the package folder it belongs to, where the patch adds a whole package


def additions(file: str, source: str) -> list[Addition]:
    """What one entry of a patch's "adds" copies: a module, or each .py file of a package folder."""
    folder = resources.files("patches").joinpath(source)
    if not folder.is_dir():
        return [Addition(file, source)]
    names = sorted(item.name for item in folder.iterdir() if item.name.endswith(".py"))
    return [Addition(f"{file}/{name}", f"{source}/{name}", file) for name in names]


@dataclass(frozen=True)
class Patch:
    name: str
    summary: str
    releases: tuple[str, ...]  # the transformers releases the patch is verified on, one by one
    requires: tuple[str, ...]
    # where ranges of releases keep the decoding methods the patch edits, by what it does with them
    methods: tuple[tuple[SpecifierSet, dict[str, tuple[str, ...]]], ...]
    adds: tuple[Addition, ...]
    edits: tuple[Edit, ...]

    def verified_on(self, version: str) -> bool:
        return version in self.releases

    def method_layouts(self, version: str) -> list[dict[str, tuple[str, ...]]]:
        """The decoding methods of `version` for each kind of edit: the one layout whose range holds it, or,
        for a release outside every range, each layout to try, the newest first."""
        try:
            parsed = Version(version)
        except InvalidVersion:
            parsed = None
        for specifier, layout in self.methods:
            if parsed is not None and parsed in specifier:
                return [layout]
        return [layout for _, layout in reversed(self.methods)]


def load_catalog() -> dict[str, Patch]:
    """Every patch, in the catalogue's order (which is also the order their edits run in)."""
    entries = importlib.import_module("patches").PATCHES
    return {
        entry["name"]: Patch(
            name=entry["name"],
            summary=entry["summary"],
            releases=tuple(entry["releases"]),
            requires=tuple(entry["requires"]),
            methods=tuple((SpecifierSet(specifier), dict(layout)) for specifier, layout in entry["methods"]),
            adds=tuple(addition for file, source in entry["adds"] for addition in additions(file, source)),
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
    """The files a set of patches edits or adds, in the order they first appear (edited files first)."""
    edited = [edit.file for patch in patches for edit in patch.edits]
    return list(dict.fromkeys([*edited, *added_files(patches)]))


def added_files(patches: list[Patch]) -> list[str]:
    """The modules a set of patches adds, which transformers itself does not have."""
    return [addition.file for patch in patches for addition in patch.adds]


def labels(names) -> dict[str, str]:
    """How a message names each file: a file of a package a patch adds by that package's folder."""
    packages = {addition.file: addition.package for patch in load_catalog().values() for addition in patch.adds}
    return {name: packages[name] + "/" if packages.get(name) else name for name in names}


def shown(names) -> list[str]:
    """`names` for a message, a package the patches add named once, by its folder."""
    return list(dict.fromkeys(labels(names).values()))


def retired_files() -> list[str]:
    """The modules earlier releases of this tool added and this one does not."""
    return list(importlib.import_module("patches").RETIRED)
