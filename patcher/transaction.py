"""The file transaction: one lock per site-packages, kept originals, a redo journal, atomic replaces.

Everything the tool records lives beside the patched files, never inside them:

    site-packages/
        .llama-graph-patch.lock          held while any command changes files here
        .llama-graph-patch/
            record.json                  which patches are applied, SHA-256 of each original and patched file
            originals/<file>             the original bytes, kept until a revert has been verified
            journal.json                 only while a change is being committed

A change is committed in this order: the originals are kept; each new file is written to a temporary
file in its target's folder (fsynced, mode copied); a journal naming those files is written
atomically; each target is replaced with os.replace and its stale bytecode removed; then the record.
A crash before the journal leaves every target untouched (the next command sweeps the temporary
files); a crash after it is rolled forward by the next command. Each file is at all times either its
old bytes or its new bytes, and a permission error strikes before the journal, so it changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import filelock

from patcher.errors import FileSystemError, ModifiedSinceApply

STATE_DIR = ".llama-graph-patch"
LOCK_FILE = ".llama-graph-patch.lock"
TEMP_SUFFIX = ".llama-graph-patch.tmp"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileRecord:
    original_sha256: str
    patched_sha256: str


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

    def original(self, relative: str, record: Record) -> bytes:
        """The kept original of a file, checked against the SHA-256 recorded when it was kept."""
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
            return interrupted

    def commit(self, contents: dict[str, bytes], record: Record | None, keep: dict[str, bytes]) -> None:
        """Write `contents` (path inside site-packages -> bytes) as one transaction.

        `keep`: originals to keep before anything changes (files not patched until now).
        `record`: the record afterwards; None when the files go back to their originals (revert): the
        records and kept originals are deleted only once every file reads back as its original.
        Call with the lock held, after recover().
        """
        with _os_errors_as_file_system_errors(self.site):
            first_apply = not (self.root / "record.json").exists()
            replacements = []
            try:
                for relative, data in keep.items():
                    _atomic_write(self.root / "originals" / relative, data)
                for relative, data in contents.items():
                    target = self.site / relative
                    if target.read_bytes() != data:
                        temporary = _write_temporary(target, data, mode=target.stat().st_mode & 0o7777)
                        replacements.append({"file": relative, "temporary": temporary.name})
            except BaseException:  # before the journal: undo everything, the targets were never touched
                for entry in replacements:
                    (self.site / entry["file"]).parent.joinpath(entry["temporary"]).unlink()
                if first_apply:
                    shutil.rmtree(self.root, ignore_errors=True)
                raise
            journal = {
                "replace": replacements,
                "expect": {relative: sha256(data) for relative, data in contents.items()},
                "record": json.loads(record.to_json()) if record else None,
            }
            _atomic_write(self.root / "journal.json", json.dumps(journal, indent=2).encode())
            self._roll_forward(journal)

    def forget(self) -> None:
        """Drop the record and the kept originals, leaving the target files as they are."""
        with _os_errors_as_file_system_errors(self.site):
            shutil.rmtree(self.root)

    def _roll_forward(self, journal: dict) -> None:
        for entry in journal["replace"]:
            target = self.site / entry["file"]
            temporary = target.parent / entry["temporary"]
            if temporary.exists():
                os.replace(temporary, target)
                _fsync_directory(target.parent)
                _remove_bytecode(target)
        for relative, expected in journal["expect"].items():
            if sha256(self.current(relative) or b"") != expected:
                raise FileSystemError(
                    f"{self.site / relative} does not read back as written (SHA-256 differs); the record and "
                    f"the kept originals in {self.root} are untouched. Run the command again"
                )
        if journal["record"] is None:
            shutil.rmtree(self.root)  # a verified revert: the originals are back
            return
        record = Record.from_json(json.dumps(journal["record"]))
        _atomic_write(self.root / "record.json", record.to_json().encode())
        for kept in list((self.root / "originals").rglob("*.py")):
            if kept.relative_to(self.root / "originals").as_posix() not in record.files:
                kept.unlink()
        (self.root / "journal.json").unlink()


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a new temporary file beside `path`, durable before it is renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.chmod(temporary, mode)
            os.fsync(sink.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return Path(temporary)


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a reader, or a crash, sees the old bytes or the new."""
    temporary = _write_temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
