"""Fixtures: copies of the real transformers 4.31.0, unpatched, patched, or fresh for one test to patch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from helpers import copy_transformers, installed_site_packages
from patcher import installer
from patcher.locate import find_target


def pytest_configure(config) -> None:
    """Child processes keep the embedded model and compile artifacts in a test folder, never the user's
    cache. The folder outlives the run, so that a second run compiles from a warm cache."""
    os.environ["LLAMA_GRAPH_PATCH_CACHE"] = os.path.join(tempfile.gettempdir(), "llama-graph-patch-tests")


@pytest.fixture(scope="session")
def pristine_site(tmp_path_factory) -> Path:
    """An unpatched copy of the installed transformers, to copy from (never patch this one)."""
    site = copy_transformers(installed_site_packages(), tmp_path_factory.mktemp("pristine") / "site-packages")
    if (site / ".llama-graph-patch").exists():
        installer.revert(find_target(site_packages=str(site)))
    assert not (site / ".llama-graph-patch").exists()
    return site


@pytest.fixture
def site(pristine_site, tmp_path) -> Path:
    """A fresh site-packages with transformers 4.31.0 in it, for one test to patch."""
    return copy_transformers(pristine_site, tmp_path / "site-packages")


def patched_copy(pristine_site: Path, folder: Path, patches: list[str]) -> Path:
    site = copy_transformers(pristine_site, folder / "site-packages")
    installer.apply(find_target(site_packages=str(site)), patches)
    return site


@pytest.fixture(scope="session")
def graph_mode_site(pristine_site, tmp_path_factory) -> Path:
    """transformers with the graph-mode patch, shared by the tests that only run it."""
    return patched_copy(pristine_site, tmp_path_factory.mktemp("graph-mode"), ["graph-mode"])


@pytest.fixture(scope="session")
def static_site(pristine_site, tmp_path_factory) -> Path:
    """transformers with the graph-mode and static-cache patches, shared by the tests that only run it."""
    return patched_copy(pristine_site, tmp_path_factory.mktemp("static-cache"), ["graph-mode", "static-cache"])
