"""apply, revert, status and diff for one target: what to write, decided from the record and the files.

This module decides; transaction.py writes; transform.py computes the patched bytes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from patcher import __version__
from patcher.cache import artifacts, cache_folder, compile_folder, usage
from patcher.catalog import Patch, added_files, files_of, labels, load_catalog, resolve, retired_files, shown
from patcher.errors import ModifiedSinceApply, UnexpectedCode
from patcher.locate import Target
from patcher.policy import check_supported, unsupported_reason, untested, untested_warning
from patcher.transaction import FileRecord, Record, State, digest
from patcher.transform import patch_files

# Every name the patches add contains this; its presence without a record means a foreign copy.
MARKER = b"llama_graph_patch"


@dataclass
class Status:
    state: str  # unpatched | patched | modified
    target: Target
    patches: list[str] = field(default_factory=list)  # applied patches, from the record
    files: list[dict] = field(default_factory=list)  # per file: file, state, patches
    detail: str = ""  # why the state is `modified`, and what to do
    record: Record | None = None
    stray: list[str] = field(default_factory=list)  # runtime modules of the patches that no record accounts for
    up_to_date: bool | None = None  # patched: whether this tool writes the same bytes (inspect(compare=True))

    def methods(self) -> dict[str, dict[str, list[str]]]:
        """Per patch, what it does with which decoding method: as applied, or as apply would on this release."""
        if self.record and self.record.methods:
            return self.record.methods
        names = self.patches or ["graph-mode"]
        version = self.target.transformers_version
        return {
            patch.name: {kind: list(methods) for kind, methods in patch.method_layouts(version)[0].items()}
            for patch in resolve(names)
            if patch.verified_on(version)
        }

    def as_json(self) -> dict:
        versions = self.target.companions
        return {
            "state": self.state,
            "file": str(self.target.path("transformers/generation/utils.py")),
            "files": self.files,
            "patches": self.patches,
            "detail": self.detail or None,
            "site_packages": str(self.target.site_packages),
            "python": self.target.python,
            "transformers_version": self.target.transformers_version,
            "supported": unsupported_reason(self.target, resolve(["graph-mode"])) is None,
            "tested": self.record.tested if self.record else None,
            "torch_version": versions.get("torch"),
            "torch_npu_version": versions.get("torch_npu"),
            "torchair_version": versions.get("torchair"),
            "tool_version": __version__,
            "applied_tool_version": self.record.tool_version if self.record else None,
            "up_to_date": self.up_to_date,
            "stray": self.stray,
            "methods": self.methods(),
            "cache": cache_report(),
        }


@dataclass
class Outcome:
    message: str  # for the console: one line, or with --dry-run one per step
    changed: bool
    warning: str | None = None  # one line for stderr: applied to a release the patches are not verified on


@dataclass
class Change:
    """What apply or revert decided: the sentence for each of doing it and of --dry-run, and the files."""

    done: str
    would: str
    contents: dict[str, bytes | None] | None = None  # what each file becomes (None: deleted); None: no change
    record: Record | None = None  # the record afterwards
    keep: dict[str, bytes] = field(default_factory=dict)  # originals to keep first


def cache_report() -> dict:
    """The tool's cache folder and how much its compile cache takes (docs/compile-time.md)."""
    root = cache_folder()
    compiled = usage(compile_folder(root))
    return {
        "root": str(root),
        "compile": str(compile_folder(root)),
        "compile_files": compiled.files,
        "compile_mb": round(compiled.mb, 3),
        "artifacts": artifacts(compile_folder(root)),
    }


def every_file() -> list[str]:
    return files_of(list(load_catalog().values()))


def in_catalog_order(names) -> list[str]:
    """`names` in the order the catalogue lists the files (a record keeps them sorted); files it no longer
    lists (recorded by another version of the tool) last."""
    order = every_file()
    return sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name))


def inspect(target: Target, state: State | None = None, compare: bool = False) -> Status:
    """Read-only: which patches the target carries, and whether its files are as the record says. With
    `compare`, a patched target also says whether this tool would write the same bytes (runs the codemods)."""
    state = state or State(target.site_packages)
    record = state.record()
    if state.interrupted():
        return Status(
            "modified",
            target,
            record.patches if record else [],
            detail=f"an apply or revert in {target.site_packages} was interrupted; run it again to finish it",
        )
    catalog = list(load_catalog().values())
    stray = [
        name for name in [*added_files(catalog), *retired_files()]
        if state.current(name) is not None and not (record and name in record.files)
    ]
    if record is None:
        foreign = [name for name in every_file() if name not in stray and MARKER in (state.current(name) or b"")]
        if foreign:
            return Status(
                "modified",
                target,
                files=[{"file": name, "state": "modified", "patches": []} for name in foreign],
                detail=(
                    f"{', '.join(foreign)} holds llama-graph-patch code but {state.root} has no record of it; "
                    "reinstall transformers (pip install --force-reinstall --no-deps "
                    f"transformers=={target.transformers_version}) and apply again"
                ),
                stray=stray,
            )
        if stray:
            return Status(
                "modified",
                target,
                files=[{"file": name, "state": "stray", "patches": []} for name in stray],
                detail=stray_detail(target, state, stray),
                stray=stray,
            )
        return Status("unpatched", target)

    files, problems = [], []
    for name in in_catalog_order(record.files):
        hashes, current = record.files[name], state.current(name)
        found = digest(current)
        if found == hashes.patched_sha256:
            file_state = "patched"
        else:
            file_state = "modified"
            why = (
                "is missing"
                if current is None
                else "equals the original again (was transformers reinstalled?)"
                if found == hashes.original_sha256
                else "was edited"
            )
            problems.append(f"{target.path(name)} {why}")
        patches = [patch.name for patch in resolve(record.patches) if name in files_of([patch])]
        files.append({"file": name, "state": file_state, "patches": patches})
    if problems or stray:
        modules = [located(target, name) for name in shown(added_and_present(state, record))]
        detail = (
            f"{'; '.join(problems)} since llama-graph-patch applied {'+'.join(record.patches)} to transformers "
            f"{record.transformers_version}. Nothing was touched. `llama-graph-patch revert --force` puts the "
            "kept originals back (and drops the record if transformers is now another version)"
            + (f" and deletes {', '.join(modules)}" if modules else "")
            if problems
            else stray_detail(target, state, stray)
        )
        return Status("modified", target, record.patches, files, detail, record, stray)
    status = Status("patched", target, record.patches, files, record=record)
    if compare:
        status.up_to_date = writes_the_same(target, state, record)
    return status


def kept_originals(state: State, record: Record) -> dict[str, bytes | None]:
    """The original bytes of every recorded file (None: absent before apply), in the catalogue's order."""
    return {name: state.original(name, record) for name in in_catalog_order(record.files)}


def added_and_present(state: State, record: Record) -> list[str]:
    """The recorded modules the patches added that are still there: what a reinstall of transformers
    leaves behind, and what revert deletes."""
    return [
        name for name, hashes in record.files.items()
        if hashes.original_sha256 is None and state.current(name) is not None
    ]


def located(target: Target, name: str) -> str:
    """A file, or a package folder (ending in /) as `shown` names it, inside the target's site-packages."""
    return str(target.path(name)) + ("/" if name.endswith("/") else "")


def stray_detail(target: Target, state: State, stray: list[str]) -> str:
    return (
        f"{', '.join(located(target, name) for name in shown(stray))}: llama-graph-patch runtime code that no record in "
        f"{state.root} accounts for (reinstalling transformers leaves it behind). `llama-graph-patch revert --force` "
        "deletes it"
    )


def writes_the_same(target: Target, state: State, record: Record) -> bool:
    """Whether this tool, applying the recorded patches to the kept originals, writes the recorded bytes:
    whether apply would find nothing to change."""
    try:
        return plan_apply(target, state, resolve(record.patches), record.tested).contents is None
    except UnexpectedCode:
        return False


def apply(
    target: Target, names: list[str], dry_run: bool = False, lock_timeout: float = 60, allow_untested: bool = False
) -> Outcome:
    """Make the target carry exactly what this tool writes for `names` (plus what they require): patch,
    switch, update another version's patch, or do nothing. A release the patches are not verified on is
    refused (exit 3) unless `allow_untested`. `dry_run` takes no lock and writes nothing."""
    patches = resolve(names)
    tested = check_supported(target, patches, allow_untested)
    warning = None if tested else untested_warning(target, patches)
    return carry_out(target, lambda state: plan_apply(target, state, patches, tested), dry_run, lock_timeout, warning)


def revert(target: Target, force: bool = False, dry_run: bool = False, lock_timeout: float = 60) -> Outcome:
    """Put the kept originals back, verified byte for byte, delete the modules the patches added, and drop
    the records. `dry_run` takes no lock and writes nothing."""
    return carry_out(target, lambda state: plan_revert(target, state, force), dry_run, lock_timeout)


def carry_out(target: Target, plan, dry_run: bool, lock_timeout: float, warning: str | None = None) -> Outcome:
    """Decide with `plan` and commit the change under the lock, after finishing an interrupted one; or, for
    a dry run, decide against a preview of the site as that recovery would leave it, and say what would happen."""
    state = State(target.site_packages)
    if dry_run:
        preview, steps = state.recovery_preview(every_file())
        change = plan(preview)
        return Outcome("\n".join([*steps, change.would]), False, warning)
    with state.locked(lock_timeout):
        state.recover(every_file())
        change = plan(state)
        if change.contents is not None:
            state.commit(change.contents, change.record, change.keep)
    return Outcome(change.done, change.contents is not None, warning)


def plan_apply(target: Target, state: State, patches: list[Patch], tested: bool) -> Change:
    status = inspect(target, state)
    if status.state == "modified":
        raise ModifiedSinceApply(status.detail)
    record = state.record()
    wanted = [patch.name for patch in patches]
    # From the pristine files: the kept originals of what is patched now, the files as they are for the rest.
    originals = kept_originals(state, record) if record else {}
    for name in files_of(patches):
        if name not in originals:
            originals[name] = state.current(name)
    contents, methods = patched(target, originals, patches)
    new_record = Record(
        patches=wanted,
        transformers_version=target.transformers_version,
        tool_version=__version__,
        files={name: FileRecord(digest(originals[name]), digest(contents[name])) for name in files_of(patches)},
        tested=tested,
        methods={patch: {kind: list(names) for kind, names in layout.items()} for patch, layout in methods.items()},
    )
    summary = describe(target, wanted)
    if record and record.patches == wanted and record.files == new_record.files:
        return Change(f"already applied: {summary}", f"already applied, nothing would change: {summary}")
    if record and record.patches == wanted:
        verb = f"updated llama-graph-patch {record.tool_version}'s patch to {__version__}'s"
    elif record:
        verb = f"switched from {'+'.join(record.patches)} to"
    else:
        verb = "patched"
    sizes = changes(originals, contents)
    gone = [name for name, data in contents.items() if data is None and state.current(name) is not None]
    if gone:  # modules an earlier release of the tool added
        sizes += f", {', '.join(shown(gone))} deleted"
    keep = {
        name: data for name, data in originals.items() if data is not None and not (record and name in record.files)
    }
    return Change(f"{verb}: {summary} ({sizes})", f"would have {verb}: {summary} ({sizes})", contents, new_record, keep)


def plan_revert(target: Target, state: State, force: bool) -> Change:
    status = inspect(target, state)
    record = state.record()
    if status.state == "modified" and not force:
        raise ModifiedSinceApply(status.detail)
    deleted = {name: None for name in status.stray}
    if record is None:
        if any(entry["state"] == "modified" for entry in status.files):  # foreign patched code, nothing kept
            raise ModifiedSinceApply(status.detail)
        if not deleted:
            message = f"not patched, nothing to revert: transformers in {target.site_packages}"
            return Change(message, message)
        names = ", ".join(shown(deleted))
        return Change(f"deleted {names} in {target.site_packages}", f"would delete {names} in {target.site_packages}",
                      deleted)
    if record.transformers_version != target.transformers_version:
        # The files now belong to another transformers release; our originals would break it. The modules
        # the patches added are ours alone: those go.
        deleted.update({name: None for name in added_and_present(state, record)})
        also = f"; deleted {', '.join(shown(deleted))}" if deleted else ""
        reason = (
            f"the record of {'+'.join(record.patches)}: transformers is now {target.transformers_version}, the kept "
            f"originals were of {record.transformers_version}; its files were left as they are"
        )
        return Change(f"dropped {reason}{also}", f"would drop {reason}{also.replace('deleted', 'would delete')}", deleted)
    originals = kept_originals(state, record)
    restored = ", ".join(name for name, data in originals.items() if data is not None)
    removed = [name for name, data in originals.items() if data is None] + list(deleted)
    also = f"; {', '.join(shown(removed))} deleted" if removed else ""
    where = f"{restored} restored byte for byte{also}, in {target.site_packages}"
    patches = "+".join(record.patches)
    return Change(f"reverted {patches}: {where}", f"would revert {patches}: {where}", {**originals, **deleted})


def diff(target: Target, names: list[str], allow_untested: bool = False) -> str:
    """The unified diff apply makes (unpatched target) or made (patched target); added modules show as new
    files."""
    state = State(target.site_packages)
    status = inspect(target, state)
    if status.state == "modified":
        raise ModifiedSinceApply(status.detail)
    record = state.record()
    if record:
        before = kept_originals(state, record)
        after = {name: state.current(name) for name in before}
    else:
        patches = resolve(names)
        check_supported(target, patches, allow_untested)
        before = {name: state.current(name) for name in files_of(patches)}
        after = patched(target, before, patches)[0]
    return "".join(
        "".join(
            difflib.unified_diff(
                lines(before[name]),
                lines(after[name]),
                fromfile=f"a/{name}" if before[name] is not None else "/dev/null",
                tofile=f"b/{name}" if after[name] is not None else "/dev/null",
            )
        )
        for name in before
    )


def lines(data: bytes | None) -> list[str]:
    return [] if data is None else data.decode("utf-8").splitlines(keepends=True)


def patched(
    target: Target, originals: dict[str, bytes | None], patches: list[Patch]
) -> tuple[dict[str, bytes | None], dict]:
    """The patched bytes and the decoding methods each patch edited; a refusal names the transformers found
    and how to get the expected code back."""
    version = target.transformers_version
    try:
        return patch_files(originals, patches, version, target.site_packages)
    except UnexpectedCode as error:
        if untested(target, patches):
            fix = "the patches are not verified on this release, and its code is not in a shape they know"
        else:
            fix = (
                "a release the patches are verified on, but its code differs: reinstall it unmodified with pip "
                f"install --force-reinstall --no-deps transformers=={version}"
            )
        raise UnexpectedCode(f"{error} (transformers {version}, {fix})") from None


def describe(target: Target, patches: list[str]) -> str:
    return f"{'+'.join(patches)} on transformers {target.transformers_version} in {target.site_packages}"


def changes(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> str:
    """'transformers/generation/utils.py +54 -0, transformers/generation/_llama_graph_patch/ +1400 -0 (new)':
    lines added and removed per file, a package the patches add counted as one."""
    counts: dict[str, list] = {}
    label = labels(before)
    for name in (name for name in before if before[name] is not None or after[name] is not None):
        old, new = [line.rstrip("\n") for line in lines(before[name])], [line.rstrip("\n") for line in lines(after[name])]
        diff_lines = list(difflib.unified_diff(old, new, n=0, lineterm=""))
        note = " (new)" if before[name] is None and after[name] is not None else ""
        note = " (deleted)" if after[name] is None and before[name] is not None else note
        entry = counts.setdefault(label[name], [0, 0, note])
        entry[0] += sum(1 for line in diff_lines if line.startswith("+") and not line.startswith("+++"))
        entry[1] += sum(1 for line in diff_lines if line.startswith("-") and not line.startswith("---"))
    return ", ".join(f"{name} +{added} -{removed}{note}" for name, (added, removed, note) in counts.items())
