"""Version policy: a patch runs only on the transformers versions it declares in patches/."""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

from patcher.catalog import Patch
from patcher.errors import UnsupportedTarget
from patcher.locate import Target


def unsupported_reason(target: Target, patches: list[Patch]) -> str | None:
    """Why `patches` cannot be applied to `target`, or None when they can."""
    for patch in patches:
        try:
            supported = Version(target.transformers_version) in patch.supported
        except InvalidVersion:
            supported = False
        if not supported:
            return (
                f"transformers {target.transformers_version} in {target.site_packages} is not supported by the "
                f"{patch.name} patch (supported: transformers{patch.supported}); install a supported version, "
                f"e.g. pip install 'transformers{patch.supported}'"
            )
    return None


def check_supported(target: Target, patches: list[Patch]) -> None:
    reason = unsupported_reason(target, patches)
    if reason:
        raise UnsupportedTarget(reason)
