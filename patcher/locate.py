"""Find the transformers to patch, and the versions around it, without importing anything from it.

The target may be this interpreter, another interpreter (`--python`, which may lack torch or even this
tool), or a bare site-packages folder (`--site-packages`). Versions come from `*.dist-info` metadata,
falling back to a literal `__version__` in the package source.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from patcher.errors import UnsupportedTarget, UsageError

# Packages whose versions decide which graph backend works; reported with every status.
COMPANIONS = ("torch", "torch_npu", "torchair")


@dataclass(frozen=True)
class Target:
    """One transformers installation and its neighbours."""

    site_packages: Path  # the folder that holds transformers/
    transformers_version: str  # "unknown" when the package declares no version
    companions: dict[str, str | None] = field(default_factory=dict)  # torch, torch_npu, torchair; None: absent
    python: str | None = None  # the interpreter asked with --python, if any

    def path(self, relative: str) -> Path:
        return self.site_packages / relative


def find_target(python: str | None = None, site_packages: str | None = None) -> Target:
    """Locate transformers the way `import transformers` would find it in the chosen environment."""
    if python and site_packages:
        raise UsageError("--python and --site-packages name two different targets; give only one")
    if site_packages:
        folder = Path(site_packages)
        if not folder.is_dir():
            raise UsageError(f"--site-packages {site_packages}: no such folder")
        search_path = [str(folder.resolve())]
    elif python:
        search_path = interpreter_path(python)
    else:
        search_path = list(sys.path)

    site = _first_holding(search_path, "transformers")
    if site is None:
        where = f"the interpreter {python}" if python else (site_packages or f"this interpreter ({sys.executable})")
        raise UnsupportedTarget(
            f"transformers is not installed in {where}; install it with: "
            "pip install transformers==4.31.0 'tokenizers<0.14'"
        )
    return Target(
        site_packages=site,
        transformers_version=package_version("transformers", [str(site)]) or "unknown",
        companions={name: package_version(name, search_path) for name in COMPANIONS},
        python=python,
    )


def interpreter_path(python: str) -> list[str]:
    """Ask another interpreter for its sys.path (it runs no code of ours and imports nothing else)."""
    try:
        result = subprocess.run(
            [python, "-c", "import json, sys; print(json.dumps(sys.path))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return [entry for entry in json.loads(result.stdout) if entry]
    except FileNotFoundError:
        raise UsageError(f"--python {python}: no such interpreter") from None
    except (subprocess.SubprocessError, OSError, ValueError) as error:
        raise UsageError(f"--python {python}: could not ask it for its packages ({error})") from None


def package_version(name: str, search_path: list[str]) -> str | None:
    """Version of the first `name` on search_path: dist-info first, then `__version__` in its source."""
    for entry in search_path:
        for dist in metadata.distributions(name=name, path=[entry]):
            if dist.version:
                return dist.version
        package = Path(entry) / name
        if package.is_dir():
            return _source_version(package)
    return None


def _first_holding(search_path: list[str], package: str) -> Path | None:
    for entry in search_path:
        if (Path(entry) / package / "__init__.py").is_file():
            return Path(entry).resolve()
    return None


def _source_version(package: Path) -> str:
    """A literal `__version__ = "..."` in version.py or __init__.py (torch keeps it in version.py)."""
    for name in ("version.py", "__init__.py"):
        source = package / name
        if not source.is_file():
            continue
        tree = ast.parse(source.read_bytes(), filename=str(source))
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                return node.value.value
    return "unknown"
