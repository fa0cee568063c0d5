"""Errors are values: each kind carries the exit code the command line returns for it.

The codes are a contract for unattended use (container builds). `meaning` is what the help text and
README.md's table (rendered by patcher/doc_tables.py) say of each code, so they cannot drift apart.
"""

DONE = (0, "done, or already in the asked state")
INTERRUPTED = (130, "interrupted (Ctrl-C); the next apply or revert finishes a change that was being committed")
READER_GONE = (141, "the output's reader stopped reading early, as `head -1` does; the command's work is done")


class PatcherError(Exception):
    """Base of every error the tool reports on one line; exit code 1 means unexpected."""

    exit_code = 1
    meaning = "unexpected error (`LLAMA_GRAPH_PATCH_DEBUG=1` prints the traceback)"


class UsageError(PatcherError):
    """The command line asks for something impossible (bad flag combination, missing path)."""

    exit_code = 2
    meaning = "usage error: bad flags, a missing path, lengths beyond the model's context, an unknown mode"


class UnsupportedTarget(PatcherError):
    """transformers is missing, or its version is not one the patch was written for."""

    exit_code = 3
    meaning = "transformers missing, or a release the patches are not verified on, without `--allow-untested`"


class UnexpectedCode(PatcherError):
    """The code to patch does not look exactly as the patch expects: refuse instead of guessing."""

    exit_code = 4
    meaning = "the code to patch is not in the expected shape (a target missing or found twice)"


class ModifiedSinceApply(PatcherError):
    """A patched file changed after apply (hand edit, pip reinstall); only --force may overwrite it."""

    exit_code = 5
    meaning = "a patched file was modified since apply (hand edit, pip reinstall); `revert --force` restores it"


class FileSystemError(PatcherError):
    """Reading or writing the target failed: permission, read-only file system, lock timeout."""

    exit_code = 6
    meaning = "file-system error: permission, read-only file system, lock timeout"


class NotPatched(PatcherError):
    """bench, warm: the transformers it would run is not patched the way they need."""

    exit_code = 7
    meaning = "bench, warm: the transformers it would run is not patched as needed (`apply [--static-cache]`)"


class BenchModeFailed(PatcherError):
    """bench, warm: at least one mode failed; the report still holds the modes that ran."""

    exit_code = 8
    meaning = "bench, warm: at least one mode failed; the report still holds the others"


def exit_codes() -> list[tuple[int, str]]:
    """Every exit code of the command line with its meaning, in order."""
    kinds = [PatcherError, *PatcherError.__subclasses__()]
    return sorted([DONE, INTERRUPTED, READER_GONE, *((kind.exit_code, kind.meaning) for kind in kinds)])
