"""The file transaction: one lock per site-packages, kept originals, a redo journal, atomic replaces.

Everything the tool records lives beside the patched files, never inside them:

    site-packages/
        .llama-graph-patch.lock          held while any command changes files here
        .llama-graph-patch/
            record.json                  which patches are applied, SHA-256 of each original and patched file
                                         (null for a file that is absent: a module the patches add)
            originals/<file>             the original bytes, kept until a revert has been verified
            journal.json                 only while a change is being committed

A change is committed in this order: the originals are kept; each new file is written to a temporary
file in its target's folder (fsynced, mode copied); a journal naming those files and the files to
delete is written atomically; the files that did not exist are moved into place first (a package's
__init__.py after its other modules), then the others are replaced with os.replace, then the files to delete
go, each time with its stale bytecode, and the folders that held only them; then the record. So an import
that a patched file adds never points at a missing module, and a package the patches add is whole before
it can be imported. A crash before the
journal leaves every target untouched (the next command sweeps the temporary files); a crash after it
is rolled forward by the next command. Each file is at all times either its old bytes or its new bytes
(or absent, where it was or will be), and a permission error strikes before the journal, so it changes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import filelock

from patcher.errors import FileSystemError, ModifiedSinceApply
from patcher.files import TEMP_SUFFIX, atomic_write, fsync_directory, write_temporary

STATE_DIR = ".llama-graph-patch"
LOCK_FILE = ".llama-graph-patch.lock"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileRecord:
    original_sha256: str | None  # None: the file did not exist before apply
    patched_sha256: str | None  # None: apply leaves no such file


def digest(data: bytes | None) -> str | None:
    """SHA-256 of a file's bytes; None for an absent file."""
    return None if data is None else sha256(data)


@dataclass(frozen=True)
class Record:
    patches: list[str]
    transformers_version: str
    tool_version: str
    files: dict[str, FileRecord]  # path inside site-packages -> hashes
    tested: bool = True  # False: applied with --allow-untested to a release the patches are not verified on
    methods: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # per patch, the decoding methods edited

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        files = {name: FileRecord(**hashes) for name, hashes in data["files"].items()}
        return cls(
            data["patches"], data["transformers_version"], data["tool_version"], files, data.get("tested", True),
            data.get("methods", {}),
        )


class State:
    """The records beside one site-packages folder, and the only code that writes into it."""

    def __init__(self, site_packages: Path) -> None:
        self.site = site_packages
        self.root = site_packages / STATE_DIR

    # -- reading -------------------------------------------------------------------------------------

    def record(self) -> Record | None:
        path = self.root / "record.json"
        return Record.from_json(path.read_text(encoding="utf-8")) if path.exists() else None

    def interrupted(self) -> bool:
        return (self.root / "journal.json").exists()

    def current(self, relative: str) -> bytes | None:
        path = self.site / relative
        return path.read_bytes() if path.exists() else None

    def original(self, relative: str, record: Record) -> bytes | None:
        """The kept original of a file, checked against the SHA-256 recorded when it was kept; None for a
        file that did not exist before apply."""
        if record.files[relative].original_sha256 is None:
            return None
        path = self.root / "originals" / relative
        data = path.read_bytes() if path.exists() else b""
        if sha256(data) != record.files[relative].original_sha256:
            raise ModifiedSinceApply(
                f"the kept original {path} is missing or damaged (SHA-256 differs from the record); it cannot "
                f"be restored. Reinstall transformers (pip install --force-reinstall --no-deps "
                f"transformers=={record.transformers_version}) and delete {self.root}"
            )
        return data

    # -- writing -------------------------------------------------------------------------------------

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Hold this site-packages' lock; concurrent runs queue here."""
        lock = filelock.FileLock(str(self.site / LOCK_FILE), timeout=timeout)
        with _os_errors_as_file_system_errors(self.site):
            try:
                lock.acquire()
            except filelock.Timeout:  # an OSError too, so caught first
                raise FileSystemError(
                    f"another llama-graph-patch run has held {self.site / LOCK_FILE} for over {timeout:g} s; "
                    "wait for it to finish, or raise --lock-timeout"
                ) from None
        try:
            yield
        finally:
            lock.release()

    def recover(self, files: list[str]) -> bool:
        """Finish a commit that a crash interrupted, and sweep up temporary files next to `files`.

        Call with the lock held. Returns True when an interrupted commit was rolled forward.
        """
        with _os_errors_as_file_system_errors(self.site):
            journal = self.root / "journal.json"
            interrupted = journal.exists()
            if interrupted:
                self._roll_forward(json.loads(journal.read_text(encoding="utf-8")))
            elif self.root.exists() and not (self.root / "record.json").exists():
                shutil.rmtree(self.root)  # originals kept by a first apply that never reached its journal
            for folder in {(self.site / relative).parent for relative in files}:
                for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
                    leftover.unlink()
                self._prune(folder)  # a package folder made for files that never moved in
            return interrupted

    def commit(self, contents: dict[str, bytes | None], record: Record | None, keep: dict[str, bytes]) -> None:
        """Write `contents` (path inside site-packages -> bytes, or None: the file must not exist) as one
        transaction.

        `keep`: originals to keep before anything changes (files not patched until now).
        `record`: the record afterwards; None when the files go back to their originals (revert): the
        records and kept originals are deleted only once every file reads back as its original.
        Call with the lock held, after recover().
        """
        with _os_errors_as_file_system_errors(self.site):
            first_apply = not (self.root / "record.json").exists()
            creations, replacements, removals = [], [], []
            try:
                for relative, data in keep.items():
                    atomic_write(self.root / "originals" / relative, data)
                for relative, data in contents.items():
                    target = self.site / relative
                    current = self.current(relative)
                    if data is None:
                        if current is not None:
                            removals.append(relative)
                    elif current is None:
                        temporary = write_temporary(target, data, mode=_new_file_mode(target))
                        creations.append({"file": relative, "temporary": temporary.name})
                    elif current != data:
                        temporary = write_temporary(target, data, mode=target.stat().st_mode & 0o7777)
                        replacements.append({"file": relative, "temporary": temporary.name})
            except BaseException:  # before the journal: undo everything, the targets were never touched
                for entry in creations + replacements:
                    (self.site / entry["file"]).parent.joinpath(entry["temporary"]).unlink()
                    self._prune((self.site / entry["file"]).parent)
                if first_apply:
                    shutil.rmtree(self.root, ignore_errors=True)
                raise
            creations.sort(key=lambda entry: Path(entry["file"]).name == "__init__.py")  # a package whole first
            journal = {
                "replace": creations + replacements,
                "remove": removals,
                "expect": {relative: digest(data) for relative, data in contents.items()},
                "record": json.loads(record.to_json()) if record else None,
            }
            atomic_write(self.root / "journal.json", json.dumps(journal, indent=2).encode())
            self._roll_forward(journal)

    def recovery_preview(self, files: list[str]) -> tuple[State, list[str]]:
        """Read-only: this site as recover() would leave it, and a sentence for each thing recover() would
        do. For --dry-run, which takes no lock and writes nothing."""
        steps = []
        journal_path = self.root / "journal.json"
        journal = json.loads(journal_path.read_text(encoding="utf-8")) if journal_path.exists() else None
        if journal is not None:
            finishing = f"apply of {'+'.join(journal['record']['patches'])}" if journal["record"] else "revert"
            moved = [entry["file"] for entry in journal["replace"]
                     if ((self.site / entry["file"]).parent / entry["temporary"]).exists()]
            removed = journal.get("remove", [])
            parts = [f"write {', '.join(moved)}"] if moved else []
            parts += [f"delete {', '.join(removed)}"] if removed else []
            steps.append(
                f"would first finish the interrupted {finishing} recorded in {journal_path}"
                + (f": {'; '.join(parts)}" if parts else "")
            )
        elif self.root.exists() and not (self.root / "record.json").exists():
            steps.append(f"would first delete {self.root}, the originals kept by an apply that stopped before writing")
        moving = {entry["temporary"] for entry in journal["replace"]} if journal else set()
        leftovers = [
            path
            for folder in {(self.site / relative).parent for relative in files}
            for path in folder.glob(f".*{TEMP_SUFFIX}")
            if path.name not in moving
        ]
        if leftovers:
            steps.append(f"would delete {len(leftovers)} temporary files an interrupted run left ({leftovers[0]}, ...)")
        return _Recovered(self.site, journal), steps

    def _prune(self, folder: Path) -> None:
        """Remove `folder` and the folders above it while they hold nothing (or only an empty __pycache__):
        a package the patches added, once its files are gone. A folder with anything else in it stays."""
        while folder != self.site and self.site in folder.parents and folder.is_dir():
            cache = folder / "__pycache__"
            if any(entry != cache for entry in folder.iterdir()) or (cache.is_dir() and any(cache.iterdir())):
                return
            if cache.is_dir():
                cache.rmdir()
            folder.rmdir()
            fsync_directory(folder.parent)
            folder = folder.parent

    def _roll_forward(self, journal: dict) -> None:
        for entry in journal["replace"]:
            target = self.site / entry["file"]
            temporary = target.parent / entry["temporary"]
            if temporary.exists():
                os.replace(temporary, target)
                fsync_directory(target.parent)
                _remove_bytecode(target)
        for relative in journal.get("remove", []):
            target = self.site / relative
            if target.exists():
                target.unlink()
                fsync_directory(target.parent)
            _remove_bytecode(target)
            self._prune(target.parent)
        for relative, expected in journal["expect"].items():
            if digest(self.current(relative)) != expected:
                raise FileSystemError(
                    f"{self.site / relative} does not read back as written (SHA-256 differs); the record and "
                    f"the kept originals in {self.root} are untouched. Run the command again"
                )
        if journal["record"] is None:
            shutil.rmtree(self.root)  # a verified revert: the originals are back
            return
        record = Record.from_json(json.dumps(journal["record"]))
        atomic_write(self.root / "record.json", record.to_json().encode())
        for kept in list((self.root / "originals").rglob("*.py")):
            if kept.relative_to(self.root / "originals").as_posix() not in record.files:
                kept.unlink()
        (self.root / "journal.json").unlink()


class _Recovered(State):
    """A site as recover() would leave it, read without writing: the journal's files count as moved into
    place or deleted, and its record as written."""

    def __init__(self, site_packages: Path, journal: dict | None) -> None:
        super().__init__(site_packages)
        self.journal = journal

    def record(self) -> Record | None:
        if self.journal is None:
            return super().record()
        return Record.from_json(json.dumps(self.journal["record"])) if self.journal["record"] else None

    def interrupted(self) -> bool:
        return False

    def current(self, relative: str) -> bytes | None:
        if self.journal is not None:
            if relative in self.journal.get("remove", []):
                return None
            for entry in self.journal["replace"]:
                temporary = (self.site / entry["file"]).parent / entry["temporary"]
                if entry["file"] == relative and temporary.exists():
                    return temporary.read_bytes()
        return super().current(relative)

    def _read_only(self, *args, **kwargs):
        raise AssertionError("a preview of recovery takes no lock and writes nothing")

    locked = recover = commit = _read_only


def _new_file_mode(path: Path) -> int:
    """The mode of a file the patches add: that of the nearest package's __init__.py, as the installer left it
    (the package's own where it adds a module to one; the package it is made in where it adds a package)."""
    for folder in path.parents:
        if (folder / "__init__.py").exists():
            return (folder / "__init__.py").stat().st_mode & 0o7777
    return 0o644


def _remove_bytecode(source: Path) -> None:
    """Drop cached bytecode of `source`, including unchecked-hash .pyc files that Python would trust
    without looking at the new source."""
    for compiled in (source.parent / "__pycache__").glob(f"{source.stem}.*.pyc"):
        compiled.unlink()


@contextmanager
def _os_errors_as_file_system_errors(site: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        where = str(error.filename or site)
        if where.endswith(TEMP_SUFFIX):  # name the folder we could not write in, not our temporary file
            where = str(Path(where).parent)
        raise FileSystemError(
            f"cannot write in {where}: {error.strerror or error}. Nothing was left half-written. Run as a user "
            f"who may write to {site}, or patch a writable environment (a venv) instead"
        ) from None
