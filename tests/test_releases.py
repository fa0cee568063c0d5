"""The graph-mode patch on every transformers release it lists, 4.28.0 to 4.41.2, from the released wheels:
apply, only the decoding methods change and only by added lines, status, revert byte for byte; and the
tokens of three releases, each in an environment of its own, against the unpatched release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.version import Version

from helpers import (
    GRAPH_MODE_RUNTIME,
    RUNTIME_FILES,
    RUNTIME_SOURCE,
    UTILS,
    changed_methods,
    check_two_graphs,
    copy_transformers,
    decoding_calls,
    generate,
    only_insertions,
    run_cli,
    tokens,
)
from patcher.catalog import load_catalog
from releases import environment, small_site

RELEASES = load_catalog()["graph-mode"].releases


def cli(*arguments) -> dict:
    result = run_cli(*arguments)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
@pytest.mark.parametrize("version", RELEASES)
def test_the_graph_mode_patch_on_every_listed_release(version, tmp_path):
    site = small_site(version, tmp_path / "site-packages")
    original = (site / UTILS).read_bytes()
    applied = cli("apply", "--site-packages", str(site))
    assert applied.stdout.startswith(f"patched: graph-mode on transformers {version}") and applied.stderr == ""
    status = json.loads(cli("status", "--json", "--site-packages", str(site)).stdout)
    assert (status["state"], status["transformers_version"], status["tested"]) == ("patched", version, True)

    patched = (site / UTILS).read_bytes()
    assert only_insertions(original, patched)
    changed, imported = changed_methods(original, patched)
    methods = status["methods"]["graph-mode"]
    assert changed == {*methods["compiled"], *methods["eager"]}
    assert imported == ["_llama_graph_patch"]  # the runtime package, written next to utils.py
    for name in RUNTIME_FILES:
        assert (site / name).read_bytes() == (RUNTIME_SOURCE / Path(name).name).read_bytes()
    # every method generate() hands the loop to is compiled or says it runs eager, or forwards to one that is
    uncovered = {name for name, called in decoding_calls(original).items() if not {name, *called} & changed}
    assert not uncovered, uncovered

    cli("revert", "--site-packages", str(site))
    assert (site / UTILS).read_bytes() == original and not (site / ".llama-graph-patch").exists()
    assert not (site / GRAPH_MODE_RUNTIME).exists()


# Llama has grouped-query attention from 4.31: 4.28.1 runs the same tiny model with multi-head attention.
# The oldest, the first with transformers' Cache (and a data-dependent SDPA mask, as in 4.37), and the
# newest release in eager and both compiled modes; 4.37.2 and the per-layer scope on 4.28.1 in max-autotune.
# On the newest a run asks for the per-layer scope, which steps aside there (layer_idx, from 4.36), and on
# 4.36.2 and the newest for the region scope, which serves their Cache objects too.
TOKEN_RUNS = [
    ("4.28.1", 4, "model", "eager,max-autotune,reduce-overhead"),
    ("4.28.1", 4, "layers", "max-autotune"),
    ("4.36.2", 2, "region", "reduce-overhead"),
    ("4.37.2", 2, "model", "max-autotune"),
    (RELEASES[-1], 2, "layers", "eager,max-autotune,reduce-overhead"),
    (RELEASES[-1], 2, "region", "max-autotune"),
]


@pytest.mark.slow
@pytest.mark.parametrize("version, kv_heads, scope, modes", TOKEN_RUNS, ids=[f"{run[0]}-{run[2]}" for run in TOKEN_RUNS])
def test_tokens_equal_the_unpatched_release(version, kv_heads, scope, modes, tmp_path):
    release = environment(version)
    site = copy_transformers(release, tmp_path / "site-packages")
    cli("apply", "--site-packages", str(site))
    # The first prompts as long as the tiny Llama's head size (8): dynamo once tied the KV cache's length to it
    # and compiled a third graph (tests/test_real_config.py has the real checkpoint's config that showed it).
    common = ("--kv-heads", kv_heads, "--new-tokens", 16, "--prompt-len", 8)
    reference, _ = generate(release, *common, "--modes", "reference")
    env = {"LLAMA_GRAPH_PATCH_COMPILE_SCOPE": scope}
    results, log = generate(site, *common, "--modes", modes, env=env, then=(release,))
    for mode, run in results.items():
        assert tokens(run) == tokens(reference["reference"]), mode
        if mode != "eager":
            check_two_graphs(run["calls"])  # compiled indeed: prefill and decode, nothing more later
    # From 4.36 each layer indexes the shared KV cache with its own layer_idx: the per-layer scope steps aside.
    effective = "model" if scope == "layers" and Version(version) >= Version("4.36") else scope
    compiled_modes = len([mode for mode in modes.split(",") if mode != "eager"])
    assert log.count(f"scope={effective}, dynamic=True, fullgraph=True") == compiled_modes * 3  # three calls each
    stepped_aside = log.count("LLAMA_GRAPH_PATCH_COMPILE_SCOPE=layers compiles the whole model instead")
    assert stepped_aside == (compiled_modes if effective != scope else 0)
    assert "runs eager" not in log and "compiles the whole model:" not in log  # the region scope kept


@pytest.mark.slow
@pytest.mark.parametrize("version, fits", [("4.42.4", True), ("4.51.3", False)])
def test_a_release_outside_the_list(version, fits, tmp_path):
    """Refused without --allow-untested; with it, applied with one warning where every place is found once
    (4.42.4), refused naming the method where not (4.51.3 moved beam search's forward pass)."""
    site = small_site(version, tmp_path / "site-packages")
    original = (site / UTILS).read_bytes()
    refused = run_cli("apply", "--site-packages", str(site))
    assert refused.returncode == 3 and "--allow-untested" in refused.stderr and "(4.28.0 to 4.41.2)" in refused.stderr

    result = run_cli("apply", "--allow-untested", "--site-packages", str(site))
    if not fits:
        assert result.returncode == 4, result.stderr
        assert "GenerationMixin._beam_search not found" in result.stderr and f"transformers {version}" in result.stderr
        assert (site / UTILS).read_bytes() == original and not (site / ".llama-graph-patch").exists()
        return
    assert result.returncode == 0, result.stderr
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith(f"llama-graph-patch: warning: transformers {version} is not among the releases")
    status = json.loads(cli("status", "--json", "--site-packages", str(site)).stdout)
    assert (status["state"], status["tested"]) == ("patched", False)
    assert only_insertions(original, (site / UTILS).read_bytes())
    cli("revert", "--site-packages", str(site))
    assert (site / UTILS).read_bytes() == original


OWN_STATIC_CACHE = """
import json, os, torch
from transformers import LlamaConfig, LlamaForCausalLM
from torch._dynamo.utils import counters
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()
ids = torch.randint(3, 99, (3, 9))
mask = torch.ones_like(ids)
mask[1, :3] = 0
tokens = {}
for mode in ("eager", "dynamo"):
    os.environ["EXE_MODE"] = mode
    with torch.no_grad():
        tokens[mode] = [model.generate(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask, max_new_tokens=12,
                                       min_new_tokens=12, do_sample=False, cache_implementation="static")[:, 9:].tolist()
                        for call in range(2)]
print(json.dumps({"same": tokens["eager"] == tokens["dynamo"], "graphs": counters["stats"]["unique_graphs"]}))
"""


@pytest.mark.slow
def test_transformers_own_static_cache_runs_compiled_under_the_graph_mode_patch(tmp_path):
    """From 4.38 transformers has a static cache of its own; on the newest listed release the graph-mode patch
    compiles generate calls that use it (cache_implementation="static") into two graphs, with eager's tokens."""
    from helpers import run_python

    release = environment(RELEASES[-1])
    site = copy_transformers(release, tmp_path / "site-packages")
    cli("apply", "--site-packages", str(site))
    result = run_python(["-c", OWN_STATIC_CACHE], site, then=(release,))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "graphs": 2}
