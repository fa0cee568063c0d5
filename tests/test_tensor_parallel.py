"""The graph-mode patch on a Llama sharded over 2 ranks of torchrun (Gloo, this CPU), and the bench's
tensor-parallel parts that need no ranks. `bench --nproc-per-node` end to end: tests/test_bench.py."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import WORKERS, run_python
from patcher.bench import ranks, setup, sharding
from patcher.bench.worker import slowest_steps
from patcher.errors import UsageError

SCRIPT = WORKERS / "tensor_parallel.py"


@pytest.mark.slow
def test_a_sharded_tiny_llama_gives_the_tokens_of_unpatched_transformers_in_one_process(pristine_site, static_site, tmp_path):
    """Every mode and both KV caches across the two calls of tests/workers/tensor_parallel.py, one layer
    (half the compile time of two); the embedded model's run through the bench covers the other pairs."""
    reference = run_python([SCRIPT, "--reference", "--layers", "1"], pristine_site, WORKERS)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = [call["tokens"] for call in json.loads(reference.stdout)["reference"]]
    modes = ["eager", "eager+static", "max-autotune+static", "reduce-overhead"]
    result = run_python(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", SCRIPT, ",".join(modes), "--layers", "1",
         "--output", str(tmp_path)],
        static_site, WORKERS, env={"LLAMA_GRAPH_PATCH_STRICT": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["rank"] for report in per_rank] == [0, 1]
    for report in per_rank:
        for mode in modes:
            assert [call["tokens"] for call in report[mode]] == expected, (report["rank"], mode)
            # prefill and decode graphs on the first call, none on the second (other prompt length)
            assert [call["graphs"] for call in report[mode]] == ([0, 0] if mode.startswith("eager") else [2, 2]), mode


def test_the_rank_counts_offered_split_every_dimension():
    config = {"num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 11008}
    for ranks_count in (1, 2, 4, 8):
        sharding.check_divisible(config, ranks_count, "a 70B-like config")
    with pytest.raises(UsageError, match="--nproc-per-node 16 does not divide num_key_value_heads 8 of x: .* use one of 1, 2, 4, 8$"):
        sharding.check_divisible(config, 16, "x")
    with pytest.raises(UsageError, match="num_attention_heads 6, num_key_value_heads 6 of y"):
        sharding.check_divisible({"num_attention_heads": 6, "intermediate_size": 12}, 4, "y")  # MHA: kv heads = heads


def test_without_the_launcher_bench_refuses_with_exit_2(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "torch.distributed.run" else real(name, *rest))
    with pytest.raises(UsageError, match=r"--nproc-per-node 2 needs torch's launcher torch.distributed.run") as error:
        setup.require_launcher(2)
    assert error.value.exit_code == 2


def test_each_rank_writes_its_own_timing_and_the_report_takes_the_slowest():
    two = ranks.Ranks(rank=1, size=2)
    assert ranks.rank_path("/w/eager.timing.jsonl", two) == "/w/eager.timing.rank1.jsonl"
    assert ranks.rank_path("/w/eager.timing.jsonl", ranks.Ranks()) == "/w/eager.timing.jsonl"
    first = [{"step": 0, "ms": 5.0, "batch": 2}, {"step": 1, "ms": 1.0, "batch": 2}]
    second = [{"step": 0, "ms": 4.0, "batch": 2}, {"step": 1, "ms": 3.0, "batch": 2}]
    assert slowest_steps([first, second]) == [{"step": 0, "ms": 5.0, "batch": 2}, {"step": 1, "ms": 3.0, "batch": 2}]
    with pytest.raises(RuntimeError, match=r"different numbers of steps: \[2, 1\]"):
        slowest_steps([first, second[:1]])


def test_one_process_is_rank_0_of_1_and_talks_with_the_parent(monkeypatch):
    import io

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = ranks.join("cpu", 900)
    assert (alone.rank, alone.size, alone.first) == (0, 1, True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("measure\n"))
    assert [alone.next_command(), alone.next_command()] == ["measure", "finish"]  # closed stdin: finish
    assert alone.gather({"tokens": [1]}) == [{"tokens": [1]}]
