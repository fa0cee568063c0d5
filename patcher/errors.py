"""Errors are values: each kind carries the exit code the command line returns for it.

The codes are a contract for unattended use (container builds); README.md documents them.
"""


class PatcherError(Exception):
    """Base of every error the tool reports on one line; exit code 1 means unexpected."""

    exit_code = 1


class UsageError(PatcherError):
    """The command line asks for something impossible (bad flag combination, missing path)."""

    exit_code = 2


class UnsupportedTarget(PatcherError):
    """transformers is missing, or its version is not one the patch was written for."""

    exit_code = 3


class UnexpectedCode(PatcherError):
    """The code to patch does not look exactly as the patch expects: refuse instead of guessing."""

    exit_code = 4


class ModifiedSinceApply(PatcherError):
    """A patched file changed after apply (hand edit, pip reinstall); only --force may overwrite it."""

    exit_code = 5


class FileSystemError(PatcherError):
    """Reading or writing the target failed: permission, read-only file system, lock timeout."""

    exit_code = 6


class NotPatched(PatcherError):
    """bench, warm: the transformers it would run is not patched the way they need."""

    exit_code = 7


class BenchModeFailed(PatcherError):
    """bench, warm: at least one mode failed; the report still holds the modes that ran."""

    exit_code = 8
