"""Every run-time switch, read from the environment once per generate call into one frozen Settings.

SWITCHES is the one list of the switches with their values and defaults (llama-graph-patch renders its
README's table from it); nothing else in the runtime reads the environment for them. A value outside a
switch's allowed ones raises ValueError naming the variable, the value and the allowed ones.
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Switch:
    """One environment variable. `kind` is "choice" (one of `choices`), "flag" (1 or 0, a bool), "count" (a
    whole number of 1 or more) or "path" (any text; unset or empty means not given)."""

    variable: str
    field: str  # the Settings field it fills
    kind: str
    default: Optional[str]  # the value when unset; None: computed, or nothing
    choices: Tuple[Tuple[str, str], ...] = ()  # (value, what it does; "" where the name says it)
    meaning: str = ""  # what the switch does, beyond its choices
    default_meaning: str = ""  # the default, in words, where it is computed or means "unset"


SWITCHES = (
    Switch("EXE_MODE", "exe_mode", "choice", "dynamo", (("dynamo", ""), ("eager", ""))),
    Switch("GRAPH_MODE", "graph_mode", "choice", "max-autotune", (("max-autotune", ""), ("reduce-overhead", ""))),
    Switch(
        "LLAMA_GRAPH_PATCH_COMPILE_SCOPE", "scope", "choice", "model",
        (
            ("model", "the whole forward, the guide's way"),
            ("layers", "the decoder layer compiled alone"),
            ("region", "the same graph, the decoder layer traced once and reused"),
        ),
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_INDUCTOR_MODE", "inductor_mode", "choice", None,
        (("default", ""), ("reduce-overhead", ""), ("max-autotune", ""), ("max-autotune-no-cudagraphs", "")),
        meaning="inductor's own mode on cuda and cpu instead of the one `GRAPH_MODE` maps to",
        default_meaning="by `GRAPH_MODE`",
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_CACHE", "cache_folder", "path", None,
        meaning="a folder: the tool's cache folder (the embedded model; the compile cache in `compile/`)",
        default_meaning="`~/.cache/llama-graph-patch` (under `XDG_CACHE_HOME` when set)",
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_FREEZE", "freeze", "choice", "auto",
        (
            ("auto", "frozen where measured to win: on a CPU, hidden size 512 and more"),
            ("1", "wherever it can: on cuda and narrower models too"),
            ("0", "never"),
        ),
        meaning="inductor takes the weights as constants of the decode graph, as torchair's `frozen_parameter`",
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_COMPILE_CACHE", "compile_cache", "flag", "1", (("1", ""), ("0", "")),
        meaning="keep and load the compile cache in the tool's cache folder",
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_PRECOMPILE", "precompile", "choice", "load",
        (
            ("load", "call precompiled code where it fits"),
            ("store", "also compile new call patterns ahead and store them (what `warm` sets)"),
            ("off", "torch's caches only"),
        ),
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_MAX_GRAPHS", "max_graphs", "count", "8",
        meaning="a positive whole number: compiled graphs the model may hold before new call patterns run eager",
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_STRICT", "strict", "flag", "0",
        (("1", "a call that cannot be compiled raises"), ("0", "it runs eager with a WARNING")),
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_TIMING", "timing", "path", None,
        meaning="a file path: time every forward step (device-synchronized), one JSON line per step",
        default_meaning="unset: no timing, no synchronize",
    ),
    Switch(
        "LLAMA_GRAPH_PATCH_STATIC_CACHE", "static_kv_cache", "flag", "1", (("1", ""), ("0", "")),
        meaning="the static KV cache, where `apply --static-cache` installed it",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The switches as one generate call sees them."""

    exe_mode: str  # "dynamo": compile; "eager": run the model as transformers does
    graph_mode: str  # "max-autotune" or "reduce-overhead", the guide's two graph modes
    scope: str  # what one compiled graph holds: "model", "region" or "layers"
    inductor_mode: Optional[str]  # inductor's mode chosen by hand; None: the one graph_mode maps to
    freeze: str  # inductor: the weights as constants of the decode graph: "auto" (on a CPU), "1" or "0" (frozen.py)
    cache_folder: str  # the tool's cache folder; the compile cache lives in its compile/
    compile_cache: bool  # keep and load the compile cache
    precompile: str  # precompiled code: "load", "store" or "off"
    max_graphs: int  # compiled graphs a model may hold before new call patterns run eager
    strict: bool  # a call that cannot be compiled raises instead of running eager
    timing: Optional[str]  # the file every forward step's time is appended to; None: no timing
    static_kv_cache: bool  # use the static KV cache where the model offers one


def read_settings(environ=None):
    """The Settings the environment gives (os.environ unless `environ` is given)."""
    environ = os.environ if environ is None else environ
    values = {switch.field: parsed(switch, environ.get(switch.variable)) for switch in SWITCHES}
    values["cache_folder"] = values["cache_folder"] or default_cache_folder(environ)
    return Settings(**values)


def parsed(switch, text):
    """One switch's value from its variable's text (None: unset)."""
    if switch.kind == "path":
        return text or None
    text = switch.default if text is None else text
    names = [name for name, _ in switch.choices]
    if switch.kind == "count" and text.isdigit() and int(text) >= 1:
        return int(text)
    if switch.kind == "flag" and text in names:
        return text == "1"
    if switch.kind == "choice" and (text is None or text in names):
        return text
    allowed = "a whole number of 1 or more" if switch.kind == "count" else "one of: " + ", ".join(names)
    raise ValueError("llama-graph-patch: %s=%r is not allowed; use %s" % (switch.variable, text, allowed))


def default_cache_folder(environ):
    """llama-graph-patch/ in the user's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-graph-patch")
