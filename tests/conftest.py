"""Fixtures: fresh copies of the real transformers 4.31.0 for each test to patch."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import copy_transformers, installed_site_packages
from patcher import installer
from patcher.locate import find_target


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
