"""The compile cache's files: private folders, trust, whole writes under a lock, and checked reads.

Each file is a JSON header line (format, key, checksums) and then its bytes. It is written whole (a
temporary file renamed over it) under an flock, so processes sharing the folder never see half a file.
Loading a file runs code (its loaders unpickle), so, as ssh does with its keys, a folder or file that
another user could have written is refused: group- or world-writable, or owned by another user than this
process's or root.
"""

import json
import os
import stat
import tempfile


def untrusted(path, root):
    """Why another user could have written `path` or a folder between `root` and it, or None. Only what
    exists is checked; folders made by make_folder are private."""
    root = os.path.abspath(root)
    path = os.path.abspath(path)
    chain = [path]
    while chain[-1] != root and os.path.dirname(chain[-1]) != chain[-1] and chain[-1].startswith(root + os.sep):
        chain.append(os.path.dirname(chain[-1]))
    for place in reversed(chain):
        try:
            info = os.stat(place)
        except FileNotFoundError:
            continue
        if info.st_uid not in (os.getuid(), 0):
            return "%s is owned by user id %d, not by this process's user (%d) or root" % (place, info.st_uid, os.getuid())
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return "%s can be written by %s (mode %s; chmod go-w %s)" % (
                place,
                "every user" if info.st_mode & stat.S_IWOTH else "its group",
                oct(stat.S_IMODE(info.st_mode)),
                place,
            )
    return None


def make_folder(path):
    """Make `path` and the missing folders above it, each readable by this user only."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile by a concurrent process
            pass


def read_file(path, root, file_format, key):
    """The header and bytes of a cache file of `file_format` written for `key`, after the trust check. Raises
    ValueError saying why the file cannot be used."""
    refused = untrusted(path, root)
    if refused:
        raise ValueError("refused: %s; another user could have written it" % refused)
    with open(path, "rb") as source:
        header_line = source.readline()
        payload = source.read()
    try:
        header = json.loads(header_line.decode("utf-8"))
    except ValueError:
        raise ValueError("unreadable: not a llama-graph-patch cache file")
    if not isinstance(header, dict) or header.get("format") != file_format:
        raise ValueError("unreadable: not a llama-graph-patch cache file of this kind")
    if header.get("key") != key:
        stored = header.get("key") or {}
        if not isinstance(stored, dict):
            raise ValueError("unreadable: its header has no key")
        for name in ("torch", "transformers", "runtime", "cann"):
            if stored.get(name) != key.get(name):
                raise ValueError("stale: written by %s %s, this is %s" % (name, stored.get(name), key.get(name)))
        raise ValueError("foreign: written for another model, dtype, device, mode, scope, KV cache or batch size")
    return header, payload


def write_file(path, header, payload):
    """Replace `path` by a header line and `payload`, whole or not at all, under the file's lock."""
    with FileLock(path + ".lock"):
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".cache.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(handle, "wb") as sink:
                sink.write(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
                sink.write(payload)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


class FileLock(object):
    """An exclusive flock on `path` while the block runs (making its folder first); no lock where fcntl is
    missing (Windows), where the atomic rename alone keeps the file whole."""

    def __init__(self, path):
        self.path = path
        self.handle = None

    def __enter__(self):
        make_folder(os.path.dirname(self.path))
        try:
            import fcntl  # POSIX only
        except ImportError:
            return self
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
        return False
