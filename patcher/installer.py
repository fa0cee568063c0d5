"""apply, revert, status and diff for one target: what to write, decided from the record and the files.

This module decides; transaction.py writes; transform.py computes the patched bytes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from patcher import __version__
from patcher.cache import cache_root, compile_folder, usage
from patcher.catalog import Patch, files_of, load_catalog, resolve
from patcher.errors import ModifiedSinceApply, UnexpectedCode
from patcher.locate import Target
from patcher.policy import check_supported, unsupported_reason, untested, untested_warning
from patcher.transaction import FileRecord, Record, State, sha256
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
            "methods": self.methods(),
            "cache": cache_report(),
        }


@dataclass
class Outcome:
    message: str  # one line for the console
    changed: bool
    warning: str | None = None  # one line for stderr: applied to a release the patches are not verified on


def cache_report() -> dict:
    """The tool's cache root and how much the compile artifacts in it take (README: compile cache)."""
    root = cache_root()
    compiled = usage(compile_folder(root))
    return {
        "root": str(root),
        "compile": str(compile_folder(root)),
        "compile_files": compiled.files,
        "compile_mb": round(compiled.mb, 3),
    }


def every_file() -> list[str]:
    return files_of(list(load_catalog().values()))


def inspect(target: Target, state: State | None = None) -> Status:
    """Read-only: which patches the target carries, and whether its files are as the record says."""
    state = state or State(target.site_packages)
    record = state.record()
    if state.interrupted():
        return Status(
            "modified",
            target,
            record.patches if record else [],
            detail=f"an apply or revert in {target.site_packages} was interrupted; run it again to finish it",
        )
    if record is None:
        foreign = [name for name in every_file() if MARKER in (state.current(name) or b"")]
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
            )
        return Status("unpatched", target)

    files, problems = [], []
    for name, hashes in record.files.items():
        current = state.current(name)
        digest = sha256(current) if current is not None else None
        if digest == hashes.patched_sha256:
            file_state = "patched"
        else:
            file_state = "modified"
            why = (
                "is missing"
                if current is None
                else "equals the original again (was transformers reinstalled?)"
                if digest == hashes.original_sha256
                else "was edited"
            )
            problems.append(f"{target.path(name)} {why}")
        patches = [patch.name for patch in resolve(record.patches) if name in files_of([patch])]
        files.append({"file": name, "state": file_state, "patches": patches})
    if not problems:
        return Status("patched", target, record.patches, files, record=record)
    return Status(
        "modified",
        target,
        record.patches,
        files,
        record=record,
        detail=(
            f"{'; '.join(problems)} since llama-graph-patch applied {'+'.join(record.patches)} to transformers "
            f"{record.transformers_version}. Nothing was touched. `llama-graph-patch revert --force` puts the "
            "kept originals back (and drops the record if transformers is now another version)"
        ),
    )


def apply(
    target: Target, names: list[str], dry_run: bool = False, lock_timeout: float = 60, allow_untested: bool = False
) -> Outcome:
    """Make the target carry exactly `names` (plus what they require): patch, switch, or do nothing.
    A release the patches are not verified on is refused (exit 3) unless `allow_untested`."""
    patches = resolve(names)
    tested = check_supported(target, patches, allow_untested)
    warning = None if tested else untested_warning(target, patches)
    wanted = [patch.name for patch in patches]
    state = State(target.site_packages)
    with state.locked(lock_timeout):
        state.recover(every_file())
        status = inspect(target, state)
        if status.state == "modified":
            raise ModifiedSinceApply(status.detail)
        record = state.record()
        if record and record.patches == wanted:
            return Outcome(f"already applied: {describe(target, wanted)}", changed=False, warning=warning)
        if record:  # switching from other patches: start again from the kept originals
            originals = {name: state.original(name, record) for name in record.files}
        else:
            originals = {}
        for name in files_of(patches):
            if name not in originals:
                originals[name] = target.path(name).read_bytes()
        contents, methods = patched(target, originals, patches)
        edited = files_of(patches)
        new_record = Record(
            patches=wanted,
            transformers_version=target.transformers_version,
            tool_version=__version__,
            files={name: FileRecord(sha256(originals[name]), sha256(contents[name])) for name in edited},
            tested=tested,
            methods={patch: {kind: list(names) for kind, names in layout.items()} for patch, layout in methods.items()},
        )
        verb = f"switched from {'+'.join(record.patches)} to" if record else "patched"
        if dry_run:
            message = f"would have {verb}: {describe(target, wanted)} ({changes(originals, contents)})"
            return Outcome(message, False, warning)
        keep = {name: data for name, data in originals.items() if not (record and name in record.files)}
        state.commit(contents, new_record, keep)
        return Outcome(f"{verb}: {describe(target, wanted)} ({changes(originals, contents)})", True, warning)


def revert(target: Target, force: bool = False, dry_run: bool = False, lock_timeout: float = 60) -> Outcome:
    """Put the kept originals back, verified byte for byte, and drop the records."""
    state = State(target.site_packages)
    with state.locked(lock_timeout):
        state.recover(every_file())
        status = inspect(target, state)
        record = state.record()
        if status.state == "modified" and not force:
            raise ModifiedSinceApply(status.detail)
        if record is None:
            if status.state == "modified":  # foreign patched code, nothing kept to restore
                raise ModifiedSinceApply(status.detail)
            return Outcome(f"not patched, nothing to revert: transformers in {target.site_packages}", changed=False)
        if record.transformers_version != target.transformers_version:
            # The files now belong to another transformers release; our originals would break it.
            if not dry_run:
                state.forget()
            return Outcome(
                f"{'would drop' if dry_run else 'dropped'} the record of {'+'.join(record.patches)}: transformers is "
                f"now {target.transformers_version}, the kept originals were of {record.transformers_version}; "
                "its files were left as they are",
                changed=not dry_run,
            )
        originals = {name: state.original(name, record) for name in record.files}
        verb = "would revert" if dry_run else "reverted"
        if not dry_run:
            state.commit(originals, None, keep={})
        return Outcome(
            f"{verb} {'+'.join(record.patches)}: {', '.join(originals)} restored byte for byte in "
            f"{target.site_packages}",
            changed=not dry_run,
        )


def diff(target: Target, names: list[str], allow_untested: bool = False) -> str:
    """The unified diff apply makes (unpatched target) or made (patched target)."""
    state = State(target.site_packages)
    status = inspect(target, state)
    if status.state == "modified":
        raise ModifiedSinceApply(status.detail)
    record = state.record()
    if record:
        before = {name: state.original(name, record) for name in record.files}
        after = {name: target.path(name).read_bytes() for name in record.files}
    else:
        patches = resolve(names)
        check_supported(target, patches, allow_untested)
        before = {name: target.path(name).read_bytes() for name in files_of(patches)}
        after = patched(target, before, patches)[0]
    return "".join(
        "".join(
            difflib.unified_diff(
                before[name].decode("utf-8").splitlines(keepends=True),
                after[name].decode("utf-8").splitlines(keepends=True),
                fromfile=f"a/{name}",
                tofile=f"b/{name}",
            )
        )
        for name in before
    )


def patched(target: Target, originals: dict[str, bytes], patches: list[Patch]) -> tuple[dict[str, bytes], dict]:
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


def changes(before: dict[str, bytes], after: dict[str, bytes]) -> str:
    """'utils.py +120 -0, ...': lines added and removed per file."""
    parts = []
    for name in before:
        added = removed = 0
        old, new = before[name].decode("utf-8").splitlines(), after[name].decode("utf-8").splitlines()
        for line in difflib.unified_diff(old, new, n=0, lineterm=""):
            if line.startswith("+") and not line.startswith("+++"):
                added += 1
            elif line.startswith("-") and not line.startswith("---"):
                removed += 1
        parts.append(f"{name} +{added} -{removed}")
    return ", ".join(parts)
