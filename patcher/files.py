"""Writing files whole: a temporary file beside the target, made durable, then renamed over it. The
transaction commits site-packages with these, and the bench writes its reports with them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Every temporary file this tool makes ends so; a run after a crash sweeps them up beside the files it patches.
TEMP_SUFFIX = ".llama-graph-patch.tmp"


def write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a new temporary file beside `path`, durable before it is renamed over `path`."""
    make_folders(path.parent)
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


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a reader, or a crash, sees the old bytes or the new."""
    temporary = write_temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink()
        raise
    fsync_directory(path.parent)


def make_folders(folder: Path) -> None:
    """Make `folder` and the missing folders above it, each with the mode of the folder it is made in (as
    pip left transformers' own)."""
    if folder.is_dir():
        return
    make_folders(folder.parent)
    folder.mkdir(exist_ok=True)
    os.chmod(folder, folder.parent.stat().st_mode & 0o7777)


def fsync_directory(folder: Path) -> None:
    """Make a rename in `folder` itself durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
