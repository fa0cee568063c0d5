"""A real checkpoint's config: SmolLM2-135M's, as its config.json gives it, cut to 2 layers, random weights.

Its head size is 64. Where the KV cache was as long as that when the first decode graph was traced (a
64-token prompt; with the static KV cache, prompt + new tokens = 64), dynamo gave both sizes one symbol
(duck sizing), the attention's views made it the constant 64, and the next decode step compiled a third
graph. Each run here meets that coincidence: two graphs on the first generate call, none later, and the
tokens of the unpatched release. Every mode, scope and KV cache is in some run; the release runs of
tests/test_releases.py meet the same coincidence with the tiny Llama in more combinations.
"""

from __future__ import annotations

import pytest

from helpers import check_two_graphs, copy_transformers, generate, run_cli, tokens
from releases import environment

RUNS = [
    # release, patches, scope, mode, longest prompt, new tokens (the third call: 7 fewer)
    ("4.31.0", ["graph-mode"], "model", "max-autotune", 64, 12),
    ("4.31.0", ["graph-mode", "static-cache"], "region", "reduce-overhead", 32, 32),
    ("4.41.2", ["graph-mode"], "model", "reduce-overhead", 64, 12),
    ("4.41.2", ["graph-mode"], "region", "max-autotune", 64, 12),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "release, patches, scope, mode, prompt, new_tokens", RUNS,
    ids=[f"{run[0]}-{'+'.join(run[1])}-{run[2]}-{run[3]}" for run in RUNS],
)
def test_smollm2_s_config_compiles_two_graphs_with_the_unpatched_tokens(
    pristine_site, tmp_path, release, patches, scope, mode, prompt, new_tokens
):
    unpatched = pristine_site if release == "4.31.0" else environment(release)  # 4.31.0: the installed one
    then = () if release == "4.31.0" else (unpatched,)
    site = copy_transformers(unpatched, tmp_path / "site-packages")
    static = ["--static-cache"] if "static-cache" in patches else []
    assert run_cli("apply", *static, "--site-packages", str(site)).returncode == 0
    common = ("--model", "smollm2-135m", "--prompt-len", prompt, "--new-tokens", new_tokens)
    reference, _ = generate(unpatched, *common, "--modes", "reference")
    results, log = generate(site, *common, "--modes", mode, env={"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope}, then=then)
    run = results[mode]
    assert tokens(run) == tokens(reference["reference"])
    check_two_graphs(run["calls"])
    assert run["static_cache"] is ("static-cache" in patches)
    assert f"scope={scope}, dynamic=True" in log and "WARNING" not in log
