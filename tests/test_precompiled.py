"""Precompiled code (LLAMA_GRAPH_PATCH_PRECOMPILE, what `warm` stores): a later process calls it without
tracing, with its own weights; every file it cannot use, and every folder another user could write, costs
one WARNING and a normal compile, never wrong tokens."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import POISON, WORKERS, generate, python_path, tokens
from helpers import graphs_after_each_call as graphs
from helpers import patch_warnings as warnings
from patches.graph_mode._llama_graph_patch import files, precompiled
from patches.graph_mode._llama_graph_patch.compile_cache import key_digest

COMMON = ("--kv-heads", 2, "--new-tokens", 12, "--modes", "max-autotune")
# The tests that start from the `stored` cache run in one xdist worker, which fills it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("precompiled-stored")]


def environment(root: Path, precompile: str = "load") -> dict:
    return {"LLAMA_GRAPH_PATCH_CACHE": str(root), "LLAMA_GRAPH_PATCH_PRECOMPILE": precompile}


def run(site: Path, root: Path, *extra) -> tuple[dict, str]:
    results, log = generate(site, *COMMON, *extra, env=environment(root))
    return results["max-autotune"], log


@pytest.fixture(scope="module")
def reference(pristine_site) -> dict:
    """Unpatched tokens of the checkpoint the code was stored with (seed 0), of another one (seed 1), and of
    one-row batches."""
    found = {}
    for name, extra in (("stored", ()), ("other weights", ("--weights-seed", 1)), ("one row", ("--rows", 1))):
        results, _ = generate(pristine_site, "--kv-heads", 2, "--new-tokens", 12, "--modes", "reference", *extra)
        found[name] = tokens(results["reference"])
    return found


@pytest.fixture(scope="module")
def stored(graph_mode_site, tmp_path_factory) -> Path:
    """A cache root that two processes stored precompiled code into at once, as two `warm`s sharing it would."""
    root = tmp_path_factory.mktemp("stored")
    env = {**os.environ, **python_path(POISON, graph_mode_site), **environment(root, "store")}
    command = [sys.executable, str(WORKERS / "generate.py"), *map(str, COMMON)]
    writers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    for writer in writers:
        out, err = writer.communicate(timeout=1200)
        assert writer.returncode == 0, err[-3000:]
        assert "saved 2 precompiled phases (prefill, decode)" in err
    return root


def stored_file(root: Path) -> Path:
    (path,) = (root / "compile" / "precompiled").glob("*.bin")
    return path


def test_a_later_process_calls_the_stored_code_without_tracing(graph_mode_site, stored, reference, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(stored, root)
    result, log = run(graph_mode_site, root)
    assert result["compile_cache"]["state"] == "precompiled" and result["compile_cache"]["load_s"] > 0
    assert tokens(result) == reference["stored"]
    assert graphs(result) == [0, 0, 0]  # nothing traced, in any call
    assert warnings(log) == []
    assert sorted(path.name for path in (root / "compile" / "precompiled").iterdir()) == sorted(
        path.name for path in (stored / "compile" / "precompiled").iterdir()
    )  # loading writes nothing


def test_a_checkpoint_of_the_same_shape_gets_its_own_tokens(graph_mode_site, stored, reference, tmp_path):
    """The weights are inputs of the stored code, not constants in it."""
    root = tmp_path / "copy"
    shutil.copytree(stored, root)
    result, log = run(graph_mode_site, root, "--weights-seed", 1)
    assert result["compile_cache"]["state"] == "precompiled" and graphs(result) == [0, 0, 0]
    assert result["frozen"] is False  # precompiled code takes the weights as inputs
    assert tokens(result) == reference["other weights"] != reference["stored"]
    assert warnings(log) == []


def spoil(path: Path, how: str) -> tuple[Path, str]:
    """Spoil a precompiled file as `how` says; returns the file the run will read and the reason it should give."""
    header_line, payload = path.read_bytes().split(b"\n", 1)
    header = json.loads(header_line)
    if how == "corrupted":
        middle = len(payload) // 2
        path.write_bytes(header_line + b"\n" + payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :])
        return path, "not using the precompiled code in %s (damaged:" % path
    if how == "truncated":
        path.write_bytes(header_line + b"\n" + payload[: len(payload) * 2 // 3])
        return path, "not using the precompiled code in %s (damaged:" % path
    if how == "other torch":
        header["key"]["torch"] = "2.12.0"
        path.write_bytes(json.dumps(header).encode() + b"\n" + payload)
        return path, "not using the precompiled code in %s (stale: written by torch 2.12.0" % path
    # other shapes: code traced for batches of 3 rows, filed where one-row batches look for theirs
    header["key"]["rows"] = "1"
    moved = path.with_name(key_digest(header["key"]) + ".bin")
    moved.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    return moved, "no precompiled code in %s fits this call" % moved


# What happens to torch's artifact file in the same run (one run tests both files): its reason.
ARTIFACT_SPOILS = {"corrupted": "unreadable", "truncated": "damaged", "other torch": "stale", "other shapes": "foreign"}


def spoil_artifacts(path: Path, how: str) -> str:
    header_line, payload = path.read_bytes().split(b"\n", 1)
    header = json.loads(header_line)
    if how == "unreadable":
        path.write_bytes(os.urandom(4096))
    elif how == "damaged":
        path.write_bytes(header_line + b"\n" + payload[: len(payload) // 2])
    else:
        header["key"]["torch" if how == "stale" else "config"] = "1.13.0" if how == "stale" else {"hidden_size": 1}
        path.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    return "not using the compile artifacts in %s (%s:" % (path, how)


@pytest.mark.parametrize("how", ["corrupted", "truncated", "other torch", "other shapes"])
def test_an_unusable_file_gives_one_warning_and_the_right_tokens(graph_mode_site, stored, reference, tmp_path, how):
    root = tmp_path / "copy"
    shutil.copytree(stored, root)
    path, reason = spoil(stored_file(root), how)
    (artifacts,) = (root / "compile" / "artifacts").glob("*.bin")
    artifacts_reason = spoil_artifacts(artifacts, ARTIFACT_SPOILS[how])
    result, log = run(graph_mode_site, root, *(("--rows", 1) if how == "other shapes" else ()))
    assert tokens(result) == reference["one row" if how == "other shapes" else "stored"]
    assert result["compile_cache"]["state"] == "cold"
    assert graphs(result)[-1] == 2  # compiled as usual: prefill and decode
    found = warnings(log)
    assert len(found) == 2, log[-3000:]  # one for each file
    assert any(artifacts_reason in line for line in found) and any(reason in line for line in found), found
    header_line, payload = artifacts.read_bytes().split(b"\n", 1)  # torch's file: written anew after the compile
    assert json.loads(header_line)["sha256"] == hashlib.sha256(payload).hexdigest()


def test_a_cache_folder_every_user_can_write_is_refused(graph_mode_site, stored, reference, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(stored, root)
    os.chmod(root, 0o777)
    before = sorted(path for path in root.rglob("*"))
    result, log = run(graph_mode_site, root)
    assert tokens(result) == reference["stored"] and graphs(result)[-1] == 2  # compiled as usual
    assert result["compile_cache"] is None  # no cache at all: nothing loaded, nothing saved
    reason = "not using the compile cache under %s: %s can be written by every user" % (root, root)
    assert len(warnings(log)) == 1 and reason in warnings(log)[0], log[-3000:]
    assert sorted(path for path in root.rglob("*")) == before


def test_a_file_its_group_can_write_is_refused(stored, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(stored, root)
    path = stored_file(root)
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    os.chmod(path, 0o620)
    with pytest.raises(ValueError, match="refused: %s can be written by its group" % path):
        precompiled.load_precompiled(precompiled.Phases(str(path), header["key"]), str(root), None)  # before a read


def test_files_are_refused_by_owner_and_mode(tmp_path, monkeypatch):
    inside = tmp_path / "compile" / "precompiled"
    files.make_folder(str(inside))
    assert [os.stat(folder).st_mode & 0o777 for folder in (tmp_path / "compile", inside)] == [0o700, 0o700]
    assert files.untrusted(str(inside / "missing.bin"), str(tmp_path)) is None
    os.chmod(tmp_path / "compile", 0o770)
    assert "can be written by its group" in files.untrusted(str(inside / "missing.bin"), str(tmp_path))
    os.chmod(tmp_path / "compile", 0o700)
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # as if another user ran this process
    owner = os.stat(tmp_path).st_uid
    if owner != 0:
        assert "is owned by user id %d" % owner in files.untrusted(str(inside), str(tmp_path))
    else:  # root's files are trusted, as ssh trusts them
        assert files.untrusted(str(inside), str(tmp_path)) is None
