"""Released transformers wheels for the release tests: downloaded once into the tests' cache folder (kept
between runs), unpacked into small site-packages to patch, or installed with the tokenizers their release
needs into an environment of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import filelock
import pytest
from packaging.requirements import Requirement

CACHE = Path(tempfile.gettempdir()) / "llama-graph-patch-tests"
# What a patch reads or edits: the package's version, and the files the patches touch.
MEMBERS = ("transformers/__init__.py", "transformers/generation/utils.py", "transformers/models/llama/modeling_llama.py")
# Installed next to a release where this environment's own version does not satisfy it.
COMPANIONS = ("tokenizers", "huggingface-hub", "safetensors")


def wheel(version: str) -> Path:
    """The wheel of transformers `version`, downloaded on first use; the test is skipped (with pip's reason)
    when the package index cannot be reached."""
    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"transformers-{version}-py3-none-any.whl"
    with filelock.FileLock(str(path) + ".lock"):
        if not path.exists():
            result = pip("download", "--no-deps", "--only-binary", ":all:", "-d", str(folder), f"transformers=={version}")
            if result.returncode != 0 or not path.exists():
                pytest.skip(f"could not download transformers {version} from the package index: {last_line(result)}")
    return path


def small_site(version: str, destination: Path) -> Path:
    """A site-packages holding just what the patches read and edit of transformers `version`."""
    with zipfile.ZipFile(wheel(version)) as archive:
        names = [name for name in archive.namelist() if name in MEMBERS or name.endswith(".dist-info/METADATA")]
        archive.extractall(destination, members=names)
    return destination


def environment(version: str) -> Path:
    """A folder with transformers `version` and the companions its release needs that this environment's
    own do not satisfy, installed with pip --target; put it on PYTHONPATH after the patched copy."""
    folder = CACHE / "environments" / version
    with filelock.FileLock(str(folder) + ".lock"):
        if not (folder / "transformers" / "__init__.py").exists():
            packages = [str(wheel(version)), *companions_needed(version)]
            result = pip("install", "--no-deps", "--only-binary", ":all:", "--target", str(folder), *packages)
            if result.returncode != 0:
                pytest.skip(f"could not install transformers {version}'s dependencies: {last_line(result)}")
    return folder


def companions_needed(version: str) -> list[str]:
    """Requirements of the release, among COMPANIONS, that the installed versions do not meet."""
    with zipfile.ZipFile(wheel(version)) as archive:
        info = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(info).decode("utf-8").splitlines()
    needed = []
    for line in lines:
        if not line.startswith("Requires-Dist: "):
            continue
        requirement = Requirement(line.removeprefix("Requires-Dist: "))
        if requirement.name not in COMPANIONS or requirement.marker is not None:
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or installed not in requirement.specifier:
            needed.append(str(requirement))
    return needed


def pip(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *arguments, "-q", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PIP_NO_INPUT": "1"},
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"
