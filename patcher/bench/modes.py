"""Mode names of `bench --modes` and `warm --modes`, and the environment each runs under.

A name is one of the guide's three modes, optionally followed by `+static` (the static KV cache) and by
`@model`, `@region` or `@layers` (LLAMA_GRAPH_PATCH_COMPILE_SCOPE), e.g. `reduce-overhead+static@region`, so that
caches and scopes compare in one interleaved run.
"""

from __future__ import annotations

from dataclasses import dataclass

from patcher.errors import UsageError

# The guide's switches for each mode (read by the patched transformers).
GUIDE_MODES = {
    "eager": {"EXE_MODE": "eager"},
    "max-autotune": {"EXE_MODE": "dynamo", "GRAPH_MODE": "max-autotune"},
    "reduce-overhead": {"EXE_MODE": "dynamo", "GRAPH_MODE": "reduce-overhead"},
}
STATIC_SUFFIX = "+static"
SCOPES = ("model", "region", "layers")
GRAMMAR = f"{'|'.join(GUIDE_MODES)}, optionally followed by {STATIC_SUFFIX} and by @model, @region or @layers"


@dataclass(frozen=True)
class Mode:
    name: str  # as given on the command line
    guide_mode: str  # eager, max-autotune or reduce-overhead
    static_cache: bool
    scope: str | None  # model, region or layers; None for eager, which compiles nothing

    @property
    def compiles(self) -> bool:
        return self.scope is not None

    def environment(self) -> dict[str, str]:
        """The variables the patched transformers reads, for this mode's worker process."""
        return {
            **GUIDE_MODES[self.guide_mode],
            "LLAMA_GRAPH_PATCH_STATIC_CACHE": "1" if self.static_cache else "0",
            "LLAMA_GRAPH_PATCH_COMPILE_SCOPE": self.scope or "model",
        }


def parse_mode(name: str, static_cache: bool = False) -> Mode:
    """One mode name; `static_cache` (--static-cache) gives every mode the static KV cache."""
    rest, _, scope = name.partition("@")
    guide_mode = rest.removesuffix(STATIC_SUFFIX)
    if guide_mode not in GUIDE_MODES or (scope and scope not in SCOPES):
        raise UsageError(f"unknown mode {name}; a mode is {GRAMMAR}")
    if scope and guide_mode == "eager":
        raise UsageError(f"mode {name}: eager compiles nothing, so it takes no @scope")
    return Mode(
        name=name,
        guide_mode=guide_mode,
        static_cache=static_cache or rest.endswith(STATIC_SUFFIX),
        scope=None if guide_mode == "eager" else scope or "model",
    )


def parse_modes(text: str, static_cache: bool = False) -> list[Mode]:
    """A comma-separated list of mode names, each once, in the order given."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise UsageError(f"no mode given; a mode is {GRAMMAR}")
    return [parse_mode(name, static_cache) for name in names]
