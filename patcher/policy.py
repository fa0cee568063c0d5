"""Version policy: a patch applies to the transformers releases patches/ lists it as verified on; another
release only with --allow-untested, and then only if every place it edits is found exactly once."""

from __future__ import annotations

from packaging.version import Version

from patcher.catalog import Patch
from patcher.errors import UnsupportedTarget
from patcher.locate import Target


def untested(target: Target, patches: list[Patch]) -> list[Patch]:
    """The patches that are not verified on the target's transformers release."""
    return [patch for patch in patches if not patch.verified_on(target.transformers_version)]


def unsupported_reason(target: Target, patches: list[Patch]) -> str | None:
    """Why `patches` cannot be applied to `target` without --allow-untested, or None when they can."""
    for patch in untested(target, patches):
        return (
            f"transformers {target.transformers_version} in {target.site_packages} is not among the releases the "
            f"{patch.name} patch is verified on ({release_ranges(patch.releases)}); install one of them, e.g. pip "
            f"install 'transformers=={patch.releases[-1]}', or pass --allow-untested to apply it anyway where every "
            "place it edits is found exactly once"
        )
    return None


def check_supported(target: Target, patches: list[Patch], allow_untested: bool = False) -> bool:
    """Whether every patch is verified on the target's release (True), or is allowed untested (False);
    raises UnsupportedTarget (exit 3) otherwise, and whatever the flag when transformers is missing a version."""
    if target.transformers_version == "unknown":
        raise UnsupportedTarget(
            f"transformers in {target.site_packages} declares no version; reinstall it: pip install "
            "--force-reinstall --no-deps transformers==4.31.0"
        )
    reason = unsupported_reason(target, patches)
    if reason and not allow_untested:
        raise UnsupportedTarget(reason)
    return reason is None


def untested_warning(target: Target, patches: list[Patch]) -> str:
    names = untested(target, patches)
    return (
        f"transformers {target.transformers_version} is not among the releases "
        + "; ".join(f"the {patch.name} patch is verified on ({release_ranges(patch.releases)})" for patch in names)
        + "; applied anyway (--allow-untested) because every place it edits was found exactly once"
    )


def release_ranges(releases: tuple[str, ...]) -> str:
    """'4.28.0 to 4.41.2' for releases of consecutive minor versions; such ranges joined by commas."""
    groups: list[list[Version]] = []
    for release in sorted(Version(release) for release in releases):
        if groups and (release.major, release.minor) <= (groups[-1][-1].major, groups[-1][-1].minor + 1):
            groups[-1].append(release)
        else:
            groups.append([release])
    return ", ".join(str(group[0]) if len(group) == 1 else f"{group[0]} to {group[-1]}" for group in groups)
