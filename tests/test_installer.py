"""apply / revert / status / diff on copies of the real transformers 4.31.0, through the real CLI."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
from importlib.util import cache_from_source
from pathlib import Path

import filelock
import pytest

from helpers import (
    GRAPH_MODE_RUNTIME, KV_CACHE_RUNTIME, MODELING, REPOSITORY, RUNTIME_FILES, RUNTIME_SOURCE, UTILS,
    console_script, copy_transformers, python_path, run_cli,
)
from patcher import __version__, cli, files, transaction
from patcher.catalog import resolve
from patcher.transform import patch_file

INIT = f"{GRAPH_MODE_RUNTIME}/__init__.py"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status_of(site: Path) -> dict:
    result = run_cli("status", "--json", "--site-packages", str(site))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """The error contract: the exit code, and one line on stderr holding the given words."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-graph-patch: error:"), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_a_reader_that_stops_reading_ends_the_command_quietly(site):
    """`status | head -1`: the pipe's reader is gone before status writes; no 'unexpected error', exit 141."""
    read, write = os.pipe()
    os.close(read)
    executable = console_script()
    try:
        result = subprocess.run(
            [str(executable), "status", "--site-packages", str(site)], stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")


def graph_mode_bytes(original: bytes) -> bytes:
    return patch_file(UTILS, original, resolve(["graph-mode"]), "4.31.0")[0]


def test_apply_status_revert_round_trip(site):
    original = (site / UTILS).read_bytes()
    assert status_of(site)["state"] == "unpatched"

    applied = run_cli("apply", "--site-packages", str(site))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("patched: graph-mode on transformers 4.31.0")
    status = status_of(site)
    assert status["state"] == "patched"
    assert status["patches"] == ["graph-mode"]
    assert status["file"] == str(site / UTILS)
    assert status["transformers_version"] == "4.31.0"
    assert {"torch_version", "torch_npu_version", "torchair_version"} <= status.keys()
    assert status["torch_npu_version"] is None and status["torchair_version"] is None
    record = json.loads((site / ".llama-graph-patch" / "record.json").read_text())
    assert record["files"][UTILS]["original_sha256"] == hashlib.sha256(original).hexdigest()
    assert record["files"][UTILS]["patched_sha256"] == sha(site / UTILS)

    for name in RUNTIME_FILES:
        assert record["files"][name] == {"original_sha256": None, "patched_sha256": sha(site / name)}
        assert (site / name).read_bytes() == (RUNTIME_SOURCE / Path(name).name).read_bytes()

    reverted = run_cli("revert", "--site-packages", str(site))
    assert reverted.returncode == 0, reverted.stderr
    assert (site / UTILS).read_bytes() == original
    assert not (site / GRAPH_MODE_RUNTIME).exists()
    assert not (site / ".llama-graph-patch").exists()
    assert status_of(site)["state"] == "unpatched"


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file below `folder` but bytecode, by relative path, and every folder but __pycache__ (None)."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
        if "__pycache__" not in path.parts
    }


def test_the_runtime_is_a_package_of_its_own_and_revert_leaves_the_pristine_tree(site, pristine_site):
    """utils.py gains the hook lines and one import; the runtime is a new package next to it, imported from
    there (its bytecode too goes with revert), and revert leaves transformers/ file for file and folder for
    folder as it was."""
    assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 0
    original, patched = (pristine_site / UTILS).read_bytes(), (site / UTILS).read_bytes()
    assert len(patched.splitlines()) - len(original.splitlines()) <= 150
    assert patched.count(b"\nfrom . import _llama_graph_patch  # added by llama-graph-patch") == 1
    probe = (
        "import transformers.generation.utils as utils, transformers.models.llama.modeling_llama as llama; "
        "print(utils._llama_graph_patch.__file__); print(llama._llama_graph_patch_kv_cache.__file__)"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              env={**os.environ, **python_path(site), "PYTHONDONTWRITEBYTECODE": ""})
    assert imported.stdout.split() == [str(site / INIT), str(site / KV_CACHE_RUNTIME)], imported.stderr
    assert list((site / GRAPH_MODE_RUNTIME / "__pycache__").glob("*.pyc"))
    assert list((site / "transformers").rglob("_llama_graph_patch_kv_cache*.pyc"))

    assert cli.main(["revert", "--site-packages", str(site)]) == 0
    assert tree(site / "transformers") == tree(pristine_site / "transformers")
    assert not list((site / "transformers").rglob("*llama_graph_patch*"))


def test_applying_or_reverting_twice_is_a_no_op(site, capsys):
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    patched = (site / UTILS).read_bytes()
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    assert "already applied" in capsys.readouterr().out
    assert (site / UTILS).read_bytes() == patched
    assert cli.main(["revert", "--site-packages", str(site)]) == 0
    assert cli.main(["revert", "--site-packages", str(site)]) == 0
    assert "not patched, nothing to revert" in capsys.readouterr().out


def test_the_patch_only_adds_lines_and_nothing_machine_specific(site):
    original = (site / UTILS).read_bytes()
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    patched = (site / UTILS).read_bytes()
    matcher = difflib.SequenceMatcher(a=original.splitlines(), b=patched.splitlines(), autojunk=False)
    assert {op for op, *_ in matcher.get_opcodes()} == {"equal", "insert"}
    assert str(site).encode() not in patched and b"site-packages" not in patched


def test_same_input_gives_the_same_bytes_wherever_it_lives(pristine_site, tmp_path):
    first = copy_transformers(pristine_site, tmp_path / "a" / "site-packages")
    second = copy_transformers(pristine_site, tmp_path / "deeper" / "b" / "lib" / "site-packages")
    for site in (first, second):
        assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 0
    for name in (UTILS, MODELING, *RUNTIME_FILES, KV_CACHE_RUNTIME):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_diff_shows_what_apply_makes_and_then_what_it_made(site):
    before = run_cli("diff", "--site-packages", str(site))
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith(f"--- a/{UTILS}\n+++ b/{UTILS}\n")
    assert "+        self = _llama_graph_patch.compile_for_generation(self, input_ids)\n" in before.stdout
    for name in RUNTIME_FILES:
        runtime = (RUNTIME_SOURCE / Path(name).name).read_text().splitlines()
        assert f"--- /dev/null\n+++ b/{name}\n@@ -0,0 +1,{len(runtime)} @@\n" in before.stdout
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    assert run_cli("diff", "--site-packages", str(site)).stdout == before.stdout


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder below `folder` (itself included) with its mode, size and mtime."""
    entries = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        entries[path.relative_to(folder).as_posix()] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return entries


def dry_runs(site: Path) -> list[str]:
    """apply --dry-run (both patch sets) and revert --dry-run; their output."""
    said = []
    for command in (["apply", "--dry-run"], ["apply", "--dry-run", "--static-cache"], ["revert", "--dry-run"]):
        result = run_cli(*command, "--site-packages", str(site))
        assert result.returncode == 0, result.stderr
        said.append(result.stdout)
    return said


def test_dry_run_leaves_every_file_folder_and_mtime_alone(site):
    before = snapshot(site)
    said = dry_runs(site)
    assert said[0].startswith("would have patched: graph-mode") and said[2].startswith("not patched")
    assert snapshot(site) == before  # no lock file, no record folder
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    before = snapshot(site)
    said = dry_runs(site)
    assert said[0].startswith("already applied, nothing would change")
    assert said[1].startswith("would have switched from graph-mode to: graph-mode+static-cache")
    assert said[2].startswith(
        f"would revert graph-mode: {UTILS} restored byte for byte; {GRAPH_MODE_RUNTIME}/ deleted"
    )
    assert snapshot(site) == before


def test_dry_run_works_on_a_read_only_site_packages(site):
    """chattr +i: even root may not create, delete or rename anything in these folders."""
    folders = [site, site / "transformers" / "generation", site / "transformers" / "models" / "llama"]
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folders[0])]).returncode != 0:
        pytest.skip("chattr +i is not available here (the dry-run test above still ran)")
    try:
        for folder in folders[1:]:
            subprocess.run(["chattr", "+i", str(folder)], check=True)
        before = snapshot(site)
        said = dry_runs(site)
    finally:
        for folder in folders:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert said[1].startswith("would have patched: graph-mode+static-cache")
    assert snapshot(site) == before


def test_dry_run_says_what_recovering_an_interrupted_apply_would_do(site):
    crash = subprocess.run([sys.executable, "-c", CRASH_AT, str(site), str(site / UTILS)], capture_output=True)
    assert crash.returncode == 137, crash.stderr
    before = snapshot(site)
    said = dry_runs(site)
    journal = site / ".llama-graph-patch" / "journal.json"
    first = f"would first finish the interrupted apply of graph-mode+static-cache recorded in {journal}: write "
    assert all(lines.startswith(first) for lines in said), said
    # as the site will be once that apply is finished
    assert said[1].splitlines()[1].startswith("already applied, nothing would change: graph-mode+static-cache")
    assert said[2].splitlines()[1].startswith("would revert graph-mode+static-cache")
    assert snapshot(site) == before


def test_a_foreign_edit_is_refused_until_revert_force(site):
    original = (site / UTILS).read_bytes()
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    edited = (site / UTILS).read_bytes() + b"# a colleague's edit\n"
    (site / UTILS).write_bytes(edited)

    assert status_of(site)["state"] == "modified"
    for command in ("apply", "revert"):
        result = run_cli(command, "--site-packages", str(site))
        one_line_error(result, 5, str(site / UTILS), "was edited since llama-graph-patch applied", "4.31.0", "revert --force")
        assert (site / UTILS).read_bytes() == edited
    forced = run_cli("revert", "--force", "--site-packages", str(site))
    assert forced.returncode == 0, forced.stderr
    assert (site / UTILS).read_bytes() == original


def test_a_reinstalled_transformers_is_noticed(site, pristine_site):
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    (site / UTILS).write_bytes((pristine_site / UTILS).read_bytes())  # what pip install --force-reinstall does
    status = status_of(site)
    assert status["state"] == "modified" and "equals the original again" in status["detail"]
    assert "revert --force` puts the kept originals back" in status["detail"]
    assert status["detail"].endswith(f"and deletes {site / GRAPH_MODE_RUNTIME}/")  # pip leaves them
    one_line_error(run_cli("apply", "--site-packages", str(site)), 5, "reinstalled")
    assert run_cli("revert", "--force", "--site-packages", str(site)).returncode == 0
    assert status_of(site)["state"] == "unpatched" and not (site / GRAPH_MODE_RUNTIME).exists()
    assert run_cli("apply", "--site-packages", str(site)).returncode == 0


def test_an_upgraded_transformers_keeps_its_files_and_loses_the_record(site):
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    set_version(site, "4.32.0")
    newer = b"# transformers 4.32.0's own utils.py\n"
    (site / UTILS).write_bytes(newer)
    result = run_cli("revert", "--force", "--site-packages", str(site))
    assert result.returncode == 0, result.stderr
    assert "dropped the record" in result.stdout and "4.32.0" in result.stdout
    assert (site / UTILS).read_bytes() == newer
    assert not (site / ".llama-graph-patch").exists()


def set_version(site: Path, version: str) -> None:
    (info,) = site.glob("transformers-*.dist-info")
    metadata = re.sub(r"(?m)^Version: .*$", f"Version: {version}", (info / "METADATA").read_text())
    (info / "METADATA").write_text(metadata)


def test_an_unlisted_release_is_refused_without_allow_untested(site):
    original = (site / UTILS).read_bytes()
    set_version(site, "4.42.0")
    result = run_cli("apply", "--site-packages", str(site))
    one_line_error(
        result, 3, "transformers 4.42.0", str(site), "verified on (4.28.0 to 4.41.2)", "pip install", "--allow-untested"
    )
    assert (site / UTILS).read_bytes() == original and not (site / ".llama-graph-patch").exists()
    assert status_of(site)["supported"] is False
    set_version(site, "4.30.2")  # another release than 4.31.0: the static cache is for 4.31.0 only
    one_line_error(run_cli("apply", "--static-cache", "--site-packages", str(site)), 3, "static-cache patch is verified on (4.31.0)")


def test_allow_untested_applies_where_every_place_is_found(site):
    """4.31.0's code under another version number: the newest layouts do not fit, the 4.29-4.38 one does."""
    original = (site / UTILS).read_bytes()
    set_version(site, "4.42.0")
    result = run_cli("apply", "--allow-untested", "--site-packages", str(site))
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("llama-graph-patch: warning: transformers 4.42.0 is not among the releases")
    assert "(4.28.0 to 4.41.2)" in warning and "--allow-untested" in warning
    status = status_of(site)
    assert status["state"] == "patched" and status["tested"] is False
    assert status["methods"]["graph-mode"]["compiled"][:2] == ["greedy_search", "sample"]
    assert "tested: false" in run_cli("status", "--site-packages", str(site)).stdout
    assert (site / UTILS).read_bytes() == patch_file(UTILS, original, resolve(["graph-mode"]), "4.31.0")[0]
    assert run_cli("revert", "--site-packages", str(site)).returncode == 0
    assert (site / UTILS).read_bytes() == original


def test_allow_untested_refuses_code_of_another_shape(site):
    source = (site / UTILS).read_text()
    position = source.index("        while True:\n", source.index("    def sample("))
    (site / UTILS).write_text(source[:position] + "        while not this_peer_finished:\n" + source[position + 20 :])
    set_version(site, "4.42.0")
    result = run_cli("apply", "--allow-untested", "--site-packages", str(site))
    one_line_error(result, 4, "GenerationMixin.", "not found", "transformers 4.42.0", "not verified on this release")
    assert not (site / ".llama-graph-patch").exists()


def test_missing_transformers_is_refused(tmp_path):
    one_line_error(run_cli("apply", "--site-packages", str(tmp_path)), 3, "not installed", "transformers==4.31.0")
    one_line_error(run_cli("status", "--site-packages", str(tmp_path / "nowhere")), 2, "no such folder")


def test_the_version_comes_from_the_source_without_dist_info(site):
    (info,) = site.glob("transformers-*.dist-info")
    for entry in info.iterdir():
        entry.unlink()
    info.rmdir()
    assert status_of(site)["transformers_version"] == "4.31.0"


# Edits inside greedy_search (the first match after its `def`), each making the patch's anchor ambiguous.
SHAPE_CHANGES = {
    "no while True": ("        while True:\n", "        while not this_peer_finished:\n"),
    "two while True": ("        while True:\n", "        while True:\n            break\n        while True:\n"),
    "no outputs = self(": ("            outputs = self(\n", "            outputs = self.forward(\n"),
    "two outputs = self(": ("            outputs = self(\n", "            outputs = self(**model_inputs)\n            outputs = self(\n"),
}


@pytest.mark.parametrize("change", SHAPE_CHANGES, ids=list(SHAPE_CHANGES))
def test_code_in_an_unexpected_shape_is_refused(site, change):
    old, new = SHAPE_CHANGES[change]
    source = (site / UTILS).read_text()
    position = source.index(old, source.index("    def greedy_search("))
    source = source[:position] + new + source[position + len(old) :]
    (site / UTILS).write_text(source)
    result = run_cli("apply", "--site-packages", str(site))
    expected = "not found" if change.startswith("no ") else "found 2 times"
    one_line_error(result, 4, UTILS, "GenerationMixin.greedy_search", expected)
    assert (site / UTILS).read_text() == source and not (site / ".llama-graph-patch").exists()


CRASH_AT = """
import os, sys
from patcher.cli import main

site, crash_path = sys.argv[1], sys.argv[2]
real_replace = os.replace


def replace(source, destination):
    if str(destination) == crash_path:
        os._exit(137)  # a crash: no cleanup, no finally
    return real_replace(source, destination)


os.replace = replace
main(["apply", "--static-cache", "--site-packages", site])
"""


# The order a commit moves files into place: the new modules first, the runtime package's __init__.py after
# its other modules, so that no import points at a missing module and the package is whole once importable.
COMMIT_ORDER = [*RUNTIME_FILES[1:], KV_CACHE_RUNTIME, INIT, UTILS, MODELING]
assert RUNTIME_FILES[0] == INIT
# Where the crash test crashes: before the journal, and at every kind of file in the commit (one package
# module stands for the others, which commit alike; the test below checks the whole order).
CRASH_POINTS = [".llama-graph-patch/journal.json", RUNTIME_FILES[1], KV_CACHE_RUNTIME, INIT, UTILS, MODELING]


def patched_files(originals: dict[str, bytes]) -> dict[str, bytes]:
    """What apply --static-cache writes, by file."""
    patched = {name: patch_file(name, data, resolve(["static-cache"]), "4.31.0")[0] for name, data in originals.items()}
    patched.update({name: (RUNTIME_SOURCE / Path(name).name).read_bytes() for name in RUNTIME_FILES})
    patched[KV_CACHE_RUNTIME] = (REPOSITORY / "patches/static_cache/_llama_graph_patch_kv_cache.py").read_bytes()
    return patched


def test_a_commit_moves_files_into_place_in_the_commit_order(site):
    crash = subprocess.run([sys.executable, "-c", CRASH_AT, str(site), str(site / MODELING)], capture_output=True)
    assert crash.returncode == 137, crash.stderr
    journal = json.loads((site / ".llama-graph-patch" / "journal.json").read_text())
    assert [entry["file"] for entry in journal["replace"]] == COMMIT_ORDER


@pytest.mark.parametrize("crash_when_replacing", CRASH_POINTS)
def test_a_crash_leaves_whole_files_and_the_next_run_finishes(site, pristine_site, crash_when_replacing):
    names = (UTILS, MODELING)
    originals = {name: (site / name).read_bytes() for name in names}
    patched = patched_files(originals)
    crash_path = str(site / crash_when_replacing)
    crash = subprocess.run([sys.executable, "-c", CRASH_AT, str(site), crash_path], capture_output=True)
    assert crash.returncode == 137, crash.stderr

    # Every file is whole, old (absent, for the new modules) or new, in COMMIT_ORDER.
    done = COMMIT_ORDER[: COMMIT_ORDER.index(crash_when_replacing)] if crash_when_replacing in COMMIT_ORDER else []
    expected = {name: patched[name] if name in done else originals.get(name) for name in COMMIT_ORDER}
    assert {name: (site / name).read_bytes() if (site / name).exists() else None for name in expected} == expected
    if crash_when_replacing.endswith("journal.json"):  # before the journal: as if nothing happened
        assert status_of(site)["state"] == "unpatched"
    else:
        status = status_of(site)
        assert status["state"] == "modified" and "interrupted" in status["detail"]
    assert list((site / "transformers").rglob(f"*{transaction.TEMP_SUFFIX}"))

    finished = run_cli("apply", "--static-cache", "--site-packages", str(site))
    assert finished.returncode == 0, finished.stderr
    assert status_of(site)["state"] == "patched"
    assert {name: (site / name).read_bytes() for name in patched} == patched
    assert not list((site / "transformers").rglob(f"*{transaction.TEMP_SUFFIX}"))
    assert run_cli("revert", "--site-packages", str(site)).returncode == 0
    assert tree(site / "transformers") == tree(pristine_site / "transformers")


def test_a_package_folder_made_before_a_crash_goes_with_the_next_run(site, pristine_site):
    """Crashed before the journal: the temporary files of the package's modules sit in a folder that apply
    made for them; the next run sweeps both, and a dry run says it would."""
    crash = subprocess.run([sys.executable, "-c", CRASH_AT, str(site), str(site / ".llama-graph-patch/journal.json")],
                           capture_output=True)
    assert crash.returncode == 137, crash.stderr
    assert (site / GRAPH_MODE_RUNTIME).is_dir()
    said = run_cli("revert", "--dry-run", "--site-packages", str(site)).stdout
    assert "would delete" in said and "temporary files" in said
    assert run_cli("revert", "--site-packages", str(site)).returncode == 0
    assert tree(site / "transformers") == tree(pristine_site / "transformers")
    assert not (site / GRAPH_MODE_RUNTIME).exists()


def refuse_writes_in(folder: Path, monkeypatch) -> None:
    """Simulate a read-only folder: root ignores permission bits, so fail the temp file creation."""
    real_mkstemp = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if Path(dir) == folder:
            raise PermissionError(13, "Permission denied", str(folder / "x.tmp"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("read_only", [UTILS, MODELING])
def test_a_read_only_file_fails_cleanly_and_touches_nothing(site, monkeypatch, capsys, read_only):
    originals = {name: (site / name).read_bytes() for name in (UTILS, MODELING)}
    refuse_writes_in((site / read_only).parent, monkeypatch)
    assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 6
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Permission denied" in error[0] and str((site / read_only).parent) in error[0]
    assert {name: (site / name).read_bytes() for name in originals} == originals
    assert not (site / ".llama-graph-patch").exists()
    assert not list((site / "transformers").rglob(f"*{transaction.TEMP_SUFFIX}"))


def test_an_immutable_folder_fails_cleanly_even_for_root(site):
    """chattr +i refuses writes even to root, where the file system supports it: a real read-only target."""
    folder = site / "transformers" / "generation"
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available here (the simulated read-only test above still ran)")
    try:
        original = (site / UTILS).read_bytes()
        result = run_cli("apply", "--site-packages", str(site))
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    one_line_error(result, 6, f"cannot write in {folder}", "Operation not permitted")
    assert (site / UTILS).read_bytes() == original and not (site / ".llama-graph-patch").exists()


def test_a_held_lock_times_out_with_exit_6(site):
    with filelock.FileLock(str(site / transaction.LOCK_FILE)):
        result = run_cli("apply", "--lock-timeout", "0.5", "--site-packages", str(site))
    one_line_error(result, 6, "over 0.5 s", "--lock-timeout")


def test_concurrent_applies_give_the_bytes_of_one(site):
    expected = graph_mode_bytes((site / UTILS).read_bytes())
    script = console_script()
    runs = [
        subprocess.Popen([str(script), "apply", "--site-packages", str(site)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0]
    assert sum(out.startswith("patched:") for out in outputs) == 1
    assert sum(out.startswith("already applied") for out in outputs) == 3
    assert (site / UTILS).read_bytes() == expected


def test_stale_bytecode_cannot_hide_the_change(site):
    """An unchecked-hash .pyc is trusted without looking at the source; apply and revert must drop it."""
    source = site / UTILS
    cached = Path(cache_from_source(str(source)))
    probe = "import transformers.generation.utils as u; print(hasattr(u, '_llama_graph_patch'))"

    def imported_patched() -> str:
        env = {**os.environ, **python_path(site), "PYTHONDONTWRITEBYTECODE": ""}
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout.strip()

    py_compile.compile(str(source), cfile=str(cached), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    assert not cached.exists()
    assert imported_patched() == "True"
    py_compile.compile(str(source), cfile=str(cached), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert cli.main(["revert", "--site-packages", str(site)]) == 0
    assert imported_patched() == "False"


def test_the_file_mode_is_kept(site):
    (site / UTILS).chmod(0o640)
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    assert (site / UTILS).stat().st_mode & 0o777 == 0o640
    assert cli.main(["revert", "--site-packages", str(site)]) == 0
    assert (site / UTILS).stat().st_mode & 0o777 == 0o640


def test_static_cache_patches_two_files_and_switching_is_clean(site, capsys):
    originals = {name: (site / name).read_bytes() for name in (UTILS, MODELING)}
    assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 0
    status = status_of(site)
    assert status["patches"] == ["graph-mode", "static-cache"]
    assert {entry["file"]: entry["patches"] for entry in status["files"]} == {
        UTILS: ["graph-mode", "static-cache"],
        MODELING: ["static-cache"],
        **{name: ["graph-mode"] for name in RUNTIME_FILES},
        KV_CACHE_RUNTIME: ["static-cache"],
    }
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    assert "switched from graph-mode+static-cache to: graph-mode" in capsys.readouterr().out
    assert (site / MODELING).read_bytes() == originals[MODELING]
    assert (site / INIT).exists() and not (site / KV_CACHE_RUNTIME).exists()
    assert (site / UTILS).read_bytes() == graph_mode_bytes(originals[UTILS])
    assert not (site / ".llama-graph-patch" / "originals" / MODELING).exists()
    assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 0
    assert cli.main(["revert", "--site-packages", str(site)]) == 0
    assert {name: (site / name).read_bytes() for name in originals} == originals


def test_a_foreign_copy_of_patched_code_is_not_taken_for_ours(site, pristine_site, tmp_path):
    other = copy_transformers(pristine_site, tmp_path / "other")
    assert cli.main(["apply", "--site-packages", str(other)]) == 0
    (site / UTILS).write_bytes((other / UTILS).read_bytes())  # patched file copied without its record
    assert status_of(site)["state"] == "modified"
    one_line_error(run_cli("apply", "--site-packages", str(site)), 5, "no record")
    one_line_error(run_cli("revert", "--force", "--site-packages", str(site)), 5, "no record")


def test_python_option_reads_a_venv_without_torch(pristine_site, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    copy_transformers(pristine_site, Path(purelib))

    status = json.loads(run_cli("status", "--json", "--python", str(python)).stdout)
    assert status["python"] == str(python)
    assert status["site_packages"] == str(Path(purelib).resolve())
    assert status["transformers_version"] == "4.31.0"
    assert status["torch_version"] is None and status["state"] == "unpatched"
    assert run_cli("apply", "--python", str(python)).returncode == 0
    assert status_of(Path(purelib))["state"] == "patched"
    one_line_error(run_cli("status", "--python", str(tmp_path / "no-python")), 2, "no such interpreter")


@pytest.mark.parametrize("command", [[], ["apply"], ["revert"], ["status"], ["diff"], ["bench"], ["warm"]])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: llama-graph-patch" in result.stdout


def test_usage_errors_exit_2(site):
    result = run_cli("apply", "--python", "x", "--site-packages", str(site))
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    assert run_cli("frobnicate").returncode == 2


def test_a_runtime_module_left_behind_is_reported_and_revert_force_deletes_it(site, pristine_site):
    """The record gone and utils.py reinstalled, the runtime module stays: pip only replaces transformers' files."""
    assert cli.main(["apply", "--site-packages", str(site)]) == 0
    shutil.rmtree(site / ".llama-graph-patch")
    (site / UTILS).write_bytes((pristine_site / UTILS).read_bytes())

    status = status_of(site)
    assert status["state"] == "modified" and status["stray"] == RUNTIME_FILES
    assert f"{site / GRAPH_MODE_RUNTIME}/: llama-graph-patch runtime code" in status["detail"]
    assert "revert --force" in status["detail"]
    for command in ("apply", "revert"):
        one_line_error(run_cli(command, "--site-packages", str(site)), 5, f"{site / GRAPH_MODE_RUNTIME}/", "revert --force")
    forced = run_cli("revert", "--force", "--site-packages", str(site))
    assert forced.returncode == 0 and forced.stdout.startswith(f"deleted {GRAPH_MODE_RUNTIME}/ in"), forced.stderr
    assert tree(site / "transformers") == tree(pristine_site / "transformers")
    assert status_of(site)["state"] == "unpatched"


def test_an_upgraded_transformers_loses_the_runtime_modules_too(site):
    assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 0
    set_version(site, "4.32.0")
    result = run_cli("revert", "--force", "--site-packages", str(site))
    assert result.returncode == 0, result.stderr
    assert f"deleted {GRAPH_MODE_RUNTIME}/, {KV_CACHE_RUNTIME}" in result.stdout
    assert not (site / GRAPH_MODE_RUNTIME).exists() and not (site / KV_CACHE_RUNTIME).exists()
    assert b"_llama_graph_patch" in (site / UTILS).read_bytes()  # 4.32.0's files: left as they are


def newer_tool(folder: Path, version: str) -> Path:
    """This tool as a later release would install it: another version, and a runtime that writes other bytes.
    Installed with pip into `folder`; returns the folder to put first on PYTHONPATH."""
    source = folder / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "results", "*.egg-info"))
    init = source / "patcher" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    runtime = source / "patches" / "graph_mode" / "_llama_graph_patch" / "__init__.py"
    runtime.write_text(runtime.read_text() + "\n\nRELEASE = %r  # what the newer runtime brings\n" % version)
    target = folder / "installed"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(source)],
        capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr
    return target


def run_tool(installed: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **python_path(installed)}
    # cwd: python -m puts the working folder first on the path, and this repository holds the current tool
    return subprocess.run([sys.executable, "-m", "patcher", *args], capture_output=True, text=True, env=env, cwd=installed)


@pytest.mark.slow
def test_a_newer_tool_updates_the_patch_an_older_one_applied(site, pristine_site, tmp_path):
    assert cli.main(["apply", "--static-cache", "--site-packages", str(site)]) == 0
    applied = status_of(site)
    assert (applied["tool_version"], applied["applied_tool_version"], applied["up_to_date"]) == (
        __version__, __version__, True
    )
    newer = newer_tool(tmp_path / "newer", "99.0.0")

    status = json.loads(run_tool(newer, "status", "--json", "--site-packages", str(site)).stdout)
    assert (status["tool_version"], status["applied_tool_version"], status["up_to_date"]) == ("99.0.0", __version__, False)
    assert "writes other bytes: `llama-graph-patch apply` updates them" in run_tool(newer, "status", "--site-packages", str(site)).stdout
    dry = run_tool(newer, "apply", "--static-cache", "--dry-run", "--site-packages", str(site))
    assert dry.stdout.startswith(f"would have updated llama-graph-patch {__version__}'s patch to 99.0.0's"), dry.stderr

    updated = run_tool(newer, "apply", "--static-cache", "--site-packages", str(site))
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.startswith(f"updated llama-graph-patch {__version__}'s patch to 99.0.0's: graph-mode+static-cache")
    assert (site / INIT).read_bytes().endswith(b"RELEASE = '99.0.0'  # what the newer runtime brings\n")
    status = json.loads(run_tool(newer, "status", "--json", "--site-packages", str(site)).stdout)
    assert (status["state"], status["applied_tool_version"], status["up_to_date"]) == ("patched", "99.0.0", True)
    assert run_tool(newer, "apply", "--static-cache", "--site-packages", str(site)).stdout.startswith("already applied")
    assert status_of(site)["up_to_date"] is False  # the older tool sees bytes it would not write

    reverted = run_tool(newer, "revert", "--site-packages", str(site))
    assert reverted.returncode == 0, reverted.stderr
    assert tree(site / "transformers") == tree(pristine_site / "transformers")
    assert not (site / ".llama-graph-patch").exists()


# llama-graph-patch 0.2.0 as released (a wheel built from its commit): the runtime as two modules, the static
# KV cache module under another name.
RELEASE_0_2_0 = REPOSITORY / "tests" / "fixtures" / "llama_graph_patch-0.2.0-py3-none-any.whl"
MODULES_0_2_0 = [
    "transformers/generation/_llama_graph_patch.py",
    "transformers/generation/_llama_graph_patch_cache.py",
    "transformers/models/llama/_llama_graph_patch_static_cache.py",
]


def test_a_site_patched_by_0_2_0_is_updated_to_the_package_and_reverts_to_pristine(site, pristine_site, tmp_path):
    old = tmp_path / "0.2.0"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(old), str(RELEASE_0_2_0)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    applied = run_tool(old, "apply", "--static-cache", "--site-packages", str(site))
    assert applied.returncode == 0, applied.stderr
    assert all((site / name).is_file() for name in MODULES_0_2_0) and not (site / GRAPH_MODE_RUNTIME).exists()
    status = status_of(site)
    assert (status["state"], status["applied_tool_version"], status["up_to_date"]) == ("patched", "0.2.0", False)

    dry = run_cli("apply", "--static-cache", "--dry-run", "--site-packages", str(site))
    assert dry.stdout.startswith(f"would have updated llama-graph-patch 0.2.0's patch to {__version__}'s"), dry.stderr
    updated = run_cli("apply", "--static-cache", "--site-packages", str(site))
    assert updated.returncode == 0, updated.stderr
    assert f"{GRAPH_MODE_RUNTIME}/ +" in updated.stdout and f"{', '.join(MODULES_0_2_0)} deleted)" in updated.stdout
    assert not any((site / name).exists() for name in MODULES_0_2_0)
    assert patched_files({name: (pristine_site / name).read_bytes() for name in (UTILS, MODELING)}) == {
        name: (site / name).read_bytes() for name in (UTILS, MODELING, *RUNTIME_FILES, KV_CACHE_RUNTIME)
    }
    status = status_of(site)
    assert (status["state"], status["applied_tool_version"], status["up_to_date"]) == ("patched", __version__, True)
    probe = "import transformers.generation.utils as u; print(u._llama_graph_patch.__file__)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, **python_path(site)})
    assert imported.stdout.strip() == str(site / INIT), imported.stderr

    reverted = run_cli("revert", "--site-packages", str(site))
    assert reverted.returncode == 0, reverted.stderr
    assert tree(site / "transformers") == tree(pristine_site / "transformers")
    assert not (site / ".llama-graph-patch").exists()


def test_modules_0_2_0_left_behind_are_found_and_revert_force_deletes_them(site, pristine_site):
    """A reinstalled transformers keeps the modules 0.2.0 added (pip replaces only its own files)."""
    for name in MODULES_0_2_0[:2]:
        (site / name).write_bytes(b"# llama_graph_patch 0.2.0's runtime\n")
    status = status_of(site)
    assert status["state"] == "modified" and status["stray"] == MODULES_0_2_0[:2]
    forced = run_cli("revert", "--force", "--site-packages", str(site))
    assert forced.returncode == 0 and forced.stdout.startswith(f"deleted {', '.join(MODULES_0_2_0[:2])} in"), forced.stderr
    assert tree(site / "transformers") == tree(pristine_site / "transformers")
