"""What a transformers release does with a Llama checkpoint's RoPE settings (config.json's rope_theta and
rope_scaling).

A release older than a setting loads the config without a word and runs the default rotary embedding
(base 10000, no scaling): a checkpoint trained otherwise (CodeLlama's base 1e6, Llama-3's 5e5 and its
llama3 scaling) then answers worse, and a benchmark of it measures a model nobody trained. bench and warm
say so before they start.
"""

from __future__ import annotations

import json

from packaging.version import InvalidVersion, Version

from patcher.errors import UsageError

# Read in each release's wheel: transformers/models/llama/configuration_llama.py and modeling_llama.py, and
# transformers/modeling_rope_utils.py from 4.43.0.
#
# rope_theta: 4.33.0 adds LlamaConfig(rope_theta=10000.0), and LlamaAttention._init_rope passes
# base=self.rope_theta; 4.28.0 to 4.32.1 have no rope_theta and build every rotary embedding with base 10000.
DEFAULT_ROPE_THETA = 10000.0
ROPE_THETA_SINCE = "4.33.0"

# rope_scaling, by the first release whose Llama reads the form:
# 4.31.0 adds {"type": "linear" | "dynamic", "factor": a float above 1} (LlamaLinearScalingRotaryEmbedding,
#   LlamaDynamicNTKScalingRotaryEmbedding); 4.28.0 to 4.30.2 have no rope_scaling.
# 4.43.0 adds modeling_rope_utils.py: the key "rope_type" ("type" still read), keys beyond type and factor
#   (llama3's original_max_position_embeddings, low_freq_factor, high_freq_factor) and these types;
#   4.42.4's configuration_llama.py still takes only type and factor.
ROPE_SCALING_SINCE = (
    ("4.31.0", ("linear", "dynamic")),
    ("4.43.0", ("default", "linear", "dynamic", "yarn", "longrope", "llama3")),
)
# 4.31.0 to 4.42.4 check rope_scaling as LlamaConfig is made (_rope_scaling_validation: the same three rules
# in all 33 releases) and raise ValueError for any other form; 4.43.0 checks it per type instead.
STRICT_CHECK = ("4.31.0", "4.43.0")
NEWEST_READ = "4.43.0"  # the newest release read for these tables


def checkpoint_warnings(config: dict, transformers_version: str, given: str) -> list[str]:
    """One warning for each RoPE setting of `config` that transformers `transformers_version` ignores; a
    UsageError for a rope_scaling it refuses to load, rather than every mode's worker failing alike."""
    try:
        running = Version(transformers_version)
    except InvalidVersion:  # "unknown": nothing to compare with
        return []
    refusal = refused_rope_scaling(config.get("rope_scaling"), running)
    if refusal:
        raise UsageError(f"--model-path {given}: config.json asks for {refusal}")
    ignored = (
        ignored_rope_theta(config.get("rope_theta"), running),
        ignored_rope_scaling(config.get("rope_scaling"), running),
    )
    return [f"--model-path {given}: config.json asks for {text}" for text in ignored if text]


def ignored_rope_theta(theta, running: Version) -> str | None:
    if theta is None or float(theta) == DEFAULT_ROPE_THETA or running >= Version(ROPE_THETA_SINCE):
        return None
    return (
        f"rope_theta {json.dumps(theta)}, which transformers {running} ignores (Llama reads rope_theta from "
        f"transformers {ROPE_THETA_SINCE} on): the model runs with rotary base 10000 instead and answers worse than "
        "it was trained to"
    )


def ignored_rope_scaling(scaling, running: Version) -> str | None:
    """Only releases without rope_scaling ignore it: the later ones read it, or refuse it."""
    # rope_type "default" asks for no scaling: what an older release does anyway
    if scaling is None or running >= Version(STRICT_CHECK[0]) or scaling_kind(scaling) == "default":
        return None
    return (
        f"rope_scaling {json.dumps(scaling)}, which transformers {running} ignores ({read_since(scaling)}): the "
        "model runs without RoPE scaling instead and answers worse than it was trained to"
    )


def refused_rope_scaling(scaling, running: Version) -> str | None:
    if scaling is None or not Version(STRICT_CHECK[0]) <= running < Version(STRICT_CHECK[1]):
        return None
    if not refused_by_strict_check(scaling):
        return None
    return (
        f"rope_scaling {json.dumps(scaling)}, which transformers {running} refuses when it loads the model "
        f'({STRICT_CHECK[0]} to 4.42.4 take only {{"type": "linear" or "dynamic", "factor": a float above 1}}; '
        f"{read_since(scaling)})"
    )


def read_since(scaling) -> str:
    since = rope_scaling_since(scaling)
    if since is None:
        return f"no Llama up to transformers {NEWEST_READ} reads this rope_scaling"
    return f"Llama reads this rope_scaling from transformers {since} on"


def rope_scaling_since(scaling) -> str | None:
    """The first release whose Llama reads this rope_scaling; None for a type no release read here knows."""
    kind = scaling_kind(scaling)
    for release, kinds in ROPE_SCALING_SINCE:
        # 4.31.0's forms are the ones its check lets through
        if kind in kinds and (release != STRICT_CHECK[0] or not refused_by_strict_check(scaling)):
            return release
    return None


def scaling_kind(scaling) -> str | None:
    if not isinstance(scaling, dict):
        return None
    return scaling.get("rope_type", scaling.get("type"))  # as 4.43.0 reads it


def refused_by_strict_check(scaling) -> bool:
    """Whether LlamaConfig of 4.31.0 to 4.42.4 raises ValueError for this rope_scaling."""
    return not (
        isinstance(scaling, dict)
        and len(scaling) == 2
        and scaling.get("type") in ("linear", "dynamic")
        and isinstance(scaling.get("factor"), float)
        and scaling["factor"] > 1.0
    )
