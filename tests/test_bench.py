"""`llama-graph-patch bench` end to end on tiny models, its refusals, and its arithmetic."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import numpy
import pytest

from helpers import console_script, python_path, run_cli
from patcher.bench import models, modes, stats
from patcher.bench.report import console_table, markdown
from patcher.cache import usage
from patches.graph_mode._llama_graph_patch.settings import SWITCHES

MODES = ("eager", "max-autotune", "reduce-overhead")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """Where the embedded model gets built for these tests (not the user's cache)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, embedded) -> Path:
    """A two-layer grouped-query Llama checkpoint with the embedded tokenizer: quick to compile."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import torch

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer_source = models.embedded_model(embedded)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (folder / name).write_bytes((tokenizer_source / name).read_bytes())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=models.EMBEDDED_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def bench(site: Path, cache: Path, *arguments: str, env: dict | None = None):
    environment = {**python_path(site), "LLAMA_GRAPH_PATCH_CACHE": str(cache), **(env or {})}
    return run_cli("bench", *arguments, env=environment, timeout=1800)


@pytest.mark.slow
def test_bench_runs_three_modes_and_reports_every_field(graph_mode_site, embedded, tiny_checkpoint, tmp_path):
    out = tmp_path / "results"
    result = bench(
        graph_mode_site, embedded,
        "--model-path", str(tiny_checkpoint), "--batch-size", "2", "--input-len", "24", "--max-new-tokens", "8",
        "--runs", "2", "--interleave", "--output-json", str(out / "b.json"), "--output-md", str(out / "b.md"), "--plot", str(out / "b.png"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "b.json").read_text())
    meta = report["metadata"]
    for field in (
        "tool_version", "torch_version", "transformers_version", "torch_npu_version", "torchair_version", "device",
        "host_cpu", "python", "model", "dtype", "batch_size", "input_len", "max_new_tokens", "time", "patches",
        "static_cache", "static_cache_mb", "weights", "model_bytes", "command",
    ):
        assert field in meta, field
    assert meta["patches"] == ["graph-mode"] and meta["static_cache"] is False and meta["interleaved"] is True
    assert meta["modes_not_run"] == []
    assert (meta["batch_size"], meta["input_len"], meta["max_new_tokens"]) == (2, 24, 8)
    assert meta["transformers_version"] == "4.31.0" and meta["dtype"] == "float32"
    assert list(report["modes"]) == list(MODES)
    for mode, numbers in report["modes"].items():
        assert numbers["status"] == "ok" and numbers["error"] is None, mode
        assert numbers["prefill_ms"] > 0 and numbers["decode_ms_mean"] > 0
        assert numbers["decode_ms_p50"] <= numbers["decode_ms_p90"] <= numbers["decode_ms_p99"]
        assert numbers["tokens_per_s"] == pytest.approx(2 * 1000 / numbers["decode_ms_mean"])
        assert numbers["new_tokens"] == 8 and numbers["new_tokens_as_asked"] is True
        assert len(numbers["step_ms"]) == 8 and len(numbers["tokens"]) == 2 and len(numbers["answers"]) == 2
        assert numbers["warmup_s"] > 0 and numbers["peak_memory_mb"] > 0
        assert numbers["token_agreement_vs_eager"] == 1.0, mode
        assert numbers["model_bytes"] > 0 and numbers["decode_bandwidth_gbs"] > 0
        assert len(numbers["stream_probes_gbs"]) == 2  # by the mode's own process, beside each measured run
        assert numbers["stream_bandwidth_gbs"] == meta["stream_bandwidth_gbs"]  # the sitting's, one for all modes
        assert numbers["decode_bandwidth_pct_of_stream"] == pytest.approx(
            100 * numbers["decode_bandwidth_gbs"] / numbers["stream_bandwidth_gbs"]
        )
        assert numbers["compile_s"] >= 0 and numbers["scope"] == (None if mode == "eager" else "model")
        assert numbers["graphs"] == (0 if mode == "eager" else 2)
        assert numbers["cuda_graphs"] is None  # counted on CUDA only
        assert numbers["compile_cache"] in ((None,) if mode == "eager" else ("cold", "warm"))
        assert numbers["frozen"] is (None if mode == "eager" else False)  # `auto`: the embedded model is narrow
    probes = [probe for numbers in report["modes"].values() for probe in numbers["stream_probes_gbs"]]
    assert meta["stream_bandwidth_gbs"] == pytest.approx(statistics.median(probes)) and meta["stream_bandwidth_gbs"] > 0
    assert report["modes"]["max-autotune"]["compile_s"] > 10 * report["modes"]["eager"]["compile_s"]
    assert report["modes"]["eager"]["decode_speedup_vs_eager"] == 1.0
    assert "| mode | batch | prefill ms | decode ms |" in (out / "b.md").read_text()
    assert "| compile s | graphs | compile cache | scope |" in (out / "b.md").read_text()
    assert "| tokens/s | GB/s | of limit |" in (out / "b.md").read_text()
    assert "% of the " in (out / "b.md").read_text() and "GB/s streamed" in (out / "b.md").read_text()
    assert "GB/s streamed; weights not frozen" in (out / "b.md").read_text()
    assert (out / "b.png").read_bytes().startswith(b"\x89PNG")
    assert result.stdout.splitlines()[0].split()[:4] == ["mode", "batch", "prefill", "ms"]
    assert result.stdout.splitlines()[0].split()[-6:] == ["compile", "s", "graphs", "compile", "cache", "scope"]
    assert "max-autotune" in result.stderr and "tok" in result.stderr  # the progress bars


def test_a_failing_mode_is_reported_and_the_others_still_run(graph_mode_site, embedded, tmp_path):
    report_path = tmp_path / "b.json"
    result = bench(
        graph_mode_site, embedded,
        "--modes", "eager,max-autotune", "--batch-size", "2", "--input-len", "16", "--max-new-tokens", "4",
        "--output-json", str(report_path), "--keep-logs", str(tmp_path / "logs"),
        # the dynamo mode may hold one graph and must raise rather than run eager: its first decode step raises
        env={"LLAMA_GRAPH_PATCH_MAX_GRAPHS": "1", "LLAMA_GRAPH_PATCH_STRICT": "1"},
    )
    assert result.returncode == 8, result.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == ["eager.log", "max-autotune.log"]
    assert "fail_on_recompile" in (tmp_path / "logs" / "max-autotune.log").read_text()
    assert "1 of 2 modes failed" in result.stderr.strip().splitlines()[-1]
    report = json.loads(report_path.read_text())
    assert report["modes"]["eager"]["status"] == "ok"
    failed = report["modes"]["max-autotune"]
    assert failed["status"] == "failed"
    assert failed["error"] and failed["error"] in Path(failed["log"]).read_text()
    assert Path(failed["log"]).exists()
    shutil.rmtree(Path(failed["log"]).parent)  # kept by bench for the user to read; not needed here
    assert "random weights, not Llama-2" in report["metadata"]["model"]


# About three times what the eager worker takes to load and warm up on 2 cores (3.3 s when they are idle).
MODE_TIMEOUT_S = 10
QUICK_EAGER = ("--modes", "eager", "--batch-size", "1", "--input-len", "8", "--max-new-tokens", "2")


def test_the_mode_timeout_spares_a_sequential_modes_measured_runs(graph_mode_site, embedded, tmp_path):
    """--mode-timeout covers loading and warm-up: a mode still measuring past it is not cut off. Its runs never
    end on their own, so that the test does not depend on how fast this machine generates."""
    (tmp_path / "tmp").mkdir()  # holds the bench's worker folder
    environment = {
        **os.environ, **python_path(graph_mode_site), "LLAMA_GRAPH_PATCH_CACHE": str(embedded), "TMPDIR": str(tmp_path / "tmp"),
    }
    command = [
        str(console_script()), "bench", *QUICK_EAGER, "--runs", "1000000",
        "--mode-timeout", str(MODE_TIMEOUT_S),
    ]
    errors = tmp_path / "bench.stderr"  # a file, not a pipe: a full pipe would stall the progress bars and the runs
    with open(errors, "w") as sink, subprocess.Popen(
        command, env=environment, start_new_session=True, stdout=subprocess.DEVNULL, stderr=sink
    ) as bench_process:
        try:
            deadline = time.monotonic() + 300
            while not (timing := list((tmp_path / "tmp").glob("llama-graph-patch-bench-*/eager.timing.jsonl"))):
                assert bench_process.poll() is None and time.monotonic() < deadline, errors.read_text()[-3000:]
                time.sleep(0.2)
            started = (timing[0].parent / "plan.json").stat().st_mtime  # the worker starts right after its plan
            time.sleep(max(0.0, started + MODE_TIMEOUT_S + 2 - time.time()))
            steps = len(timing[0].read_text().splitlines())
            growing = time.monotonic() + 20  # each measured run starts with a probe of the memory bandwidth (1 GiB)
            while len(timing[0].read_text().splitlines()) == steps and time.monotonic() < growing:
                time.sleep(0.2)
            assert bench_process.poll() is None, errors.read_text()[-3000:]
            assert len(timing[0].read_text().splitlines()) > steps  # still measuring
        finally:
            with contextlib.suppress(ProcessLookupError):  # a bench that ended leaves no group to kill
                os.killpg(bench_process.pid, signal.SIGKILL)  # the bench and its worker


def test_the_mode_timeout_ends_a_mode_whose_warm_up_outlasts_it(graph_mode_site, embedded, tmp_path):
    report_path = tmp_path / "b.json"
    result = bench(
        graph_mode_site, embedded, *QUICK_EAGER, "--warmup-runs", "1000000", "--mode-timeout", str(MODE_TIMEOUT_S),
        "--output-json", str(report_path),
    )
    assert result.returncode == 8, result.stderr[-3000:]
    assert "warm-up" in result.stderr  # the progress bar's phase: loading was done
    failed = json.loads(report_path.read_text())["modes"]["eager"]
    assert failed["status"] == "failed" and failed["error"] == f"timed out after {MODE_TIMEOUT_S} s (--mode-timeout)"
    shutil.rmtree(Path(failed["log"]).parent)  # kept by bench for the user to read; not needed here


@pytest.mark.slow
def test_the_report_is_written_after_each_mode(graph_mode_site, embedded, tiny_checkpoint, tmp_path):
    """A bench cut off midway (a device call's time limit, say) leaves the modes that ended."""
    report_path = tmp_path / "b.json"
    arguments = [
        "bench", "--model-path", str(tiny_checkpoint), "--modes", "eager,max-autotune", "--cold", "--batch-size", "1",
        "--input-len", "8", "--max-new-tokens", "2", "--output-json", str(report_path),
    ]
    (tmp_path / "tmp").mkdir()  # the worker folder a killed bench leaves behind
    environment = {
        **os.environ, **python_path(graph_mode_site), "LLAMA_GRAPH_PATCH_CACHE": str(embedded), "TMPDIR": str(tmp_path / "tmp"),
    }
    executable = console_script()
    with subprocess.Popen([str(executable), *arguments], env=environment, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as bench_process:
        try:
            deadline = time.monotonic() + 600
            while not report_path.exists() and bench_process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            midway = json.loads(report_path.read_text())  # written whole before max-autotune's compile ends
        finally:
            os.killpg(bench_process.pid, signal.SIGKILL)  # the bench and its worker
    assert list(midway["modes"]) == ["eager"] and midway["modes"]["eager"]["status"] == "ok"
    assert midway["metadata"]["modes_not_run"] == ["max-autotune"]


def test_the_upstream_flags_run_the_single_mode_they_name(graph_mode_site, embedded, tiny_checkpoint, tmp_path):
    report_path = tmp_path / "b.json"
    result = bench(
        graph_mode_site, embedded,
        "--model_path", str(tiny_checkpoint), "--execute_mode", "eager", "--batch-size", "1", "--input-len", "8",
        "--max-new-tokens", "2", "--output-json", str(report_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(json.loads(report_path.read_text())["modes"]) == ["eager"]


def test_one_run_compares_the_growing_and_the_static_cache(static_site, embedded, tiny_checkpoint, tmp_path):
    report_path = tmp_path / "b.json"
    result = bench(
        static_site, embedded,
        "--model-path", str(tiny_checkpoint), "--modes", "eager,eager+static", "--batch-size", "2",
        "--input-len", "12", "--max-new-tokens", "6", "--runs", "2", "--interleave", "--output-json", str(report_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    growing, static = report["modes"]["eager"], report["modes"]["eager+static"]
    assert growing["static_cache_mb"] is None and static["static_cache_mb"] > 0
    assert static["token_agreement_vs_eager"] == 1.0 and static["new_tokens"] == 6
    assert static["decode_speedup_vs_eager"] == pytest.approx(growing["decode_ms_mean"] / static["decode_ms_mean"])
    assert report["metadata"]["static_cache"] is True
    assert "static cache: in the +static modes" in result.stdout


@pytest.mark.parametrize(
    "arguments, code, message",
    [
        (["--modes", "eager,turbo"], 2, "unknown mode turbo"),
        (["--input-len", "2000", "--max-new-tokens", "100"], 2, "= 2100 exceeds the model's max_position_embeddings 2048"),
        (["--model-path", "/no/such/model"], 2, "no such folder"),
        (["--static-cache"], 7, "run: llama-graph-patch apply --static-cache"),
        (["--modes", "eager,eager+static"], 7, "run: llama-graph-patch apply --static-cache"),
        (["--modes", "eager+turbo"], 2, "unknown mode eager+turbo"),
        (["--modes", "max-autotune@blocks"], 2, "unknown mode max-autotune@blocks"),
        (["--modes", "eager@layers"], 2, "eager compiles nothing, so it takes no @scope"),
        (["--model-path", "/tmp", "--layers", "3"], 2, "a checkpoint keeps its own layers"),
        (["--layers", "0"], 2, "must be at least 1"),
        (["--modes", "eager", "--execute_mode", "eager"], 2, "exclude each other"),
        (["--nproc-per-node", "3"], 2, "--nproc-per-node 3 does not divide num_attention_heads 4, num_key_value_heads 2, "
         "intermediate_size 344 of the embedded model: each rank must hold an equal share of the heads; use one of 1, 2"),
        (["--nproc-per-node", "0"], 2, "must be at least 1"),
    ],
)
def test_refusals(graph_mode_site, embedded, arguments, code, message):
    result = bench(graph_mode_site, embedded, *arguments)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


# One decoder layer: the sharded graphs compile in half the time of the embedded model's four.
TWO_RANKS = ("--layers", "1", "--batch-size", "2", "--input-len", "16", "--max-new-tokens", "4")


@pytest.mark.slow
def test_two_ranks_give_the_tokens_of_one_process_with_two_graphs_per_rank(static_site, embedded, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = bench(static_site, embedded, "--modes", "eager", *TWO_RANKS, "--output-json", str(one))
    assert single.returncode == 0, single.stderr[-4000:]
    result = bench(
        static_site, embedded, "--nproc-per-node", "2", "--modes", "eager,max-autotune,reduce-overhead+static",
        *TWO_RANKS, "--output-json", str(two), "--output-md", str(tmp_path / "two.md"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reference = json.loads(one.read_text())["modes"]["eager"]
    report = json.loads(two.read_text())
    assert report["metadata"]["world_size"] == 2 and json.loads(one.read_text())["metadata"]["world_size"] == 1
    for mode, numbers in report["modes"].items():
        assert numbers["status"] == "ok", numbers["error"]
        assert numbers["tokens"] == reference["tokens"], mode
        assert numbers["graphs_per_rank"] == ([0, 0] if mode == "eager" else [2, 2]), mode
        assert len(numbers["peak_memory_mb_per_rank"]) == 2 and min(numbers["peak_memory_mb_per_rank"]) > 0
        assert numbers["peak_memory_mb"] == max(numbers["peak_memory_mb_per_rank"])
        # each rank holds half of every decoder layer's weights, all of the embeddings and the head
        assert numbers["model_bytes"] < reference["model_bytes"]
    assert report["modes"]["reduce-overhead+static"]["static_cache_mb"] > 0
    assert "2 ranks, tensor parallel" in result.stdout and " 2/2 " in result.stdout
    assert "- tensor parallel: 2 ranks" in (tmp_path / "two.md").read_text()


def rank_process(rank: int, tmp: Path) -> int | None:
    """The pid of the bench worker the launcher started as `rank` for this test (its environment says RANK=rank
    and TMPDIR=tmp: another test's ranks may be running)."""
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            command = (folder / "cmdline").read_bytes().split(b"\0")
            environment = (folder / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"patcher.bench.worker" in command and b"torch.distributed.run" not in command and f"RANK={rank}".encode() in environment \
                and f"TMPDIR={tmp}".encode() in environment:
            return int(folder.name)
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop, expected",
    [
        (signal.SIGKILL, "rank 1 failed (exit code -9): Signal 9 (SIGKILL)"),
        # a rank that stops answering: rank 0's next collective waits out --collective-timeout
        (signal.SIGSTOP, "Timed out waiting 5000ms"),
    ],
    ids=["killed", "stopped"],
)
def test_a_rank_that_dies_or_stops_mid_run_ends_the_bench_with_exit_8(graph_mode_site, embedded, tmp_path, stop, expected):
    environment = {**os.environ, **python_path(graph_mode_site), "LLAMA_GRAPH_PATCH_CACHE": str(embedded), "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [str(console_script()), "bench", "--nproc-per-node", "2", "--modes", "eager",
         *TWO_RANKS, "--runs", "100000", "--collective-timeout", "5", "--output-json", str(tmp_path / "b.json")],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("llama-graph-patch-bench-*/eager.timing.rank1.jsonl")):  # rank 1 is measuring
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.2)
    os.kill(rank_process(1, tmp_path), stop)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 8, stderr[-3000:]
    assert expected in stderr.splitlines()[-1]
    assert json.loads((tmp_path / "b.json").read_text())["modes"]["eager"]["status"] == "failed"
    assert rank_process(0, tmp_path) is None and rank_process(1, tmp_path) is None  # the launcher ended both


@pytest.mark.parametrize("name, scope", [("max-autotune", "model"), ("reduce-overhead+static@region", "region"),
                                         ("max-autotune@layers", "layers"), ("eager", None)])
def test_a_mode_name_sets_the_scope_the_patched_transformers_reads(name, scope):
    mode = modes.parse_mode(name)
    assert mode.scope == scope
    assert mode.environment()["LLAMA_GRAPH_PATCH_COMPILE_SCOPE"] == (scope or "model")
    (scopes,) = [switch.choices for switch in SWITCHES if switch.variable == "LLAMA_GRAPH_PATCH_COMPILE_SCOPE"]
    assert modes.SCOPES == ("model", "region", "layers") and set(modes.SCOPES) == {name for name, _ in scopes}


def test_refuses_a_checkpoint_that_is_not_llama(graph_mode_site, embedded, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = bench(graph_mode_site, embedded, "--model-path", str(tmp_path))
    assert result.returncode == 2 and "model_type is 'gpt2', not 'llama'" in result.stderr


def hub_cache(home: Path, repo_id: str, checkpoint: Path) -> Path:
    """HF_HOME/hub holding `checkpoint` as huggingface-cli download leaves it: refs/main names a commit
    whose snapshot folder links each file to its blob. Returns the snapshot folder."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_id_in_the_local_cache_runs_from_its_snapshot(graph_mode_site, embedded, tiny_checkpoint, tmp_path):
    snapshot = hub_cache(tmp_path / "hf", "test-org/tiny-llama", tiny_checkpoint)
    report_path = tmp_path / "b.json"
    result = bench(
        graph_mode_site, embedded,
        "--model-path", "test-org/tiny-llama", "--modes", "eager", "--batch-size", "1", "--input-len", "8",
        "--max-new-tokens", "2", "--output-json", str(report_path), env={"HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["metadata"]["model"] == f"test-org/tiny-llama ({snapshot})"
    assert report["metadata"]["weights"] == "checkpoint"
    assert report["modes"]["eager"]["status"] == "ok" and report["modes"]["eager"]["new_tokens"] == 2


def test_a_hub_id_missing_from_the_cache_says_where_it_looked_and_how_to_get_it(graph_mode_site, embedded, tmp_path):
    result = bench(graph_mode_site, embedded, "--model-path", "test-org/absent", env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"llama-graph-patch: error: --model-path test-org/absent: no such folder, and the Hugging Face cache "
        f"{tmp_path / 'hf' / 'hub'} holds no snapshot of the hub model test-org/absent (models--test-org--absent, "
        "branch main); on a machine with network run `huggingface-cli download test-org/absent` and copy its "
        "cache here (or point HF_HOME at a copy), or pass the checkpoint's folder"
    )


def with_settings(checkpoint: Path, folder: Path, **settings) -> Path:
    """A copy of `checkpoint` whose config.json also says `settings`."""
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **settings}))
    return folder


def test_a_rope_base_the_running_transformers_ignores_is_a_warning(graph_mode_site, embedded, tiny_checkpoint, tmp_path):
    folder = with_settings(tiny_checkpoint, tmp_path / "codellama-like", rope_theta=1000000.0)
    json_path, markdown_path = tmp_path / "bench.json", tmp_path / "bench.md"
    result = bench(
        graph_mode_site, embedded,
        "--model-path", str(folder), "--modes", "eager", "--batch-size", "1", "--input-len", "8", "--max-new-tokens", "2",
        "--output-json", str(json_path), "--output-md", str(markdown_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warning = (
        f"--model-path {folder}: config.json asks for rope_theta 1000000.0, which "
        "transformers 4.31.0 ignores (Llama reads rope_theta from transformers 4.33.0 on): the model runs with rotary "
        "base 10000 instead and answers worse than it was trained to"
    )
    assert f"llama-graph-patch: warning: {warning}" in result.stderr.splitlines()  # before the modes run
    assert f"warning: {warning}" in result.stdout.splitlines()  # and again under the table
    assert json.loads(json_path.read_text())["metadata"]["warnings"] == [warning]
    assert f"- **warning**: {warning}" in markdown_path.read_text().splitlines()


def test_a_rope_scaling_the_running_transformers_refuses_exits_2_before_any_worker(
    graph_mode_site, embedded, tiny_checkpoint, tmp_path
):
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
               "rope_type": "llama3"}
    folder = with_settings(tiny_checkpoint, tmp_path / "llama3-like", rope_scaling=scaling)
    result = bench(
        graph_mode_site, embedded, "--model-path", str(folder), "--modes", "eager", "--input-len", "8",
        "--max-new-tokens", "2", env={"TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"llama-graph-patch: error: --model-path {folder}: config.json asks for rope_scaling {json.dumps(scaling)}, "
        'which transformers 4.31.0 refuses when it loads the model (4.31.0 to 4.42.4 take only {"type": "linear" or '
        '"dynamic", "factor": a float above 1}; Llama reads this rope_scaling from transformers 4.43.0 on)'
    )
    assert not list(tmp_path.glob("llama-graph-patch-bench-*"))  # no worker folder: no worker started


def test_refuses_an_unpatched_transformers(pristine_site, embedded):
    result = bench(pristine_site, embedded, "--modes", "eager")
    assert result.returncode == 7
    assert f"({pristine_site}) is unpatched; run: llama-graph-patch apply" in result.stderr


def test_the_embedded_model_is_the_same_bytes_every_build(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        models.build_embedded_model(folder)
    names = sorted(path.name for path in first.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"]
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)

    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(first, use_fast=False)
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    for prompt in models.GUIDE_PROMPTS:
        assert tokenizer.decode(tokenizer(prompt)["input_ids"], skip_special_tokens=True) == prompt
    model = LlamaForCausalLM.from_pretrained(first)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention


@pytest.mark.parametrize("tied", [True, False])
def test_a_decode_step_reads_every_weight_but_the_embedding_table(tied):
    """The input embedding reads only its tokens' rows; a table tied to the output head is read whole, once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from patcher.bench.sharding import weight_bytes_read

    config = LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    everything = sum(parameter.numel() for parameter in model.parameters()) * 4
    table = 1000 * 16 * 4
    assert weight_bytes_read(model) == (everything if tied else everything - table)


def hand_made_report(answers: dict, prompts: list[str]) -> dict:
    """A report as bench builds it, of modes that gave `answers` (one per prompt; "failed": a mode that failed)."""
    metadata = {
        "time": "2025-01-01T00:00:00+00:00", "model": "tiny", "device": "cpu", "host_cpu": "cpu", "dtype": "float32",
        "batch_size": len(prompts), "input_len": 8, "max_new_tokens": 4, "warmup_runs": 1, "runs": 1, "world_size": 1,
        "decoding": {"num_beams": 1, "do_sample": False, "seed": 0}, "static_cache": False, "static_cache_mb": None,
        "patches": ["graph-mode"], "torch_version": "2.13.0", "transformers_version": "4.31.0", "python": "3.11",
        "tool_version": "0", "command": "llama-graph-patch bench", "modes_not_run": [], "model_bytes": 1000,
        "prompts": prompts,
    }
    ran = {
        "status": "ok", "error": None, "prefill_ms": 2.0, "decode_ms_mean": 1.0, "decode_ms_p90": 1.0,
        "tokens_per_s": 1000.0, "peak_memory_mb": 300.0, "decode_speedup_vs_eager": 1.0, "token_agreement_vs_eager": 1.0,
        "compile_s": 0.0, "graphs": 0, "compile_cache": None, "scope": None, "decode_bandwidth_gbs": None, "cuda_graphs": None,
    }
    failed = {"status": "failed", "error": "boom", "log": "/tmp/boom.log"}
    modes = {mode: failed if texts == "failed" else {**ran, "answers": texts} for mode, texts in answers.items()}
    return {"metadata": metadata, "modes": modes}


PROMPTS = ["Why is the sky blue?", "What's your name?"]


def test_the_reports_show_eagers_answers_and_that_every_mode_agrees():
    answers = ["Because of air.", "Llama."]
    results = hand_made_report({"eager": answers, "max-autotune": answers, "reduce-overhead": answers}, PROMPTS)
    assert console_table(results).splitlines()[-5:] == [
        "",
        "Answers: eager's, and each mode's that differs from it:",
        "prompt                eager            modes that differ",
        "Why is the sky blue?  Because of air.  none",
        "What's your name?     Llama.           none",
    ]
    assert markdown(results).splitlines()[-7:] == [
        "",
        "Answers: eager's, and each mode's that differs from it:",
        "",
        "| prompt | eager | modes that differ |",
        "|---|---|---|",
        "| Why is the sky blue? | Because of air. | none |",
        "| What's your name? | Llama. | none |",
    ]


def test_the_reports_name_the_modes_whose_answers_differ_and_what_they_answered():
    results = hand_made_report(
        {
            "eager": ["Because of air.", "Llama."],
            "max-autotune": ["Because of air.", "Alpaca."],
            "reduce-overhead": ["Because of dust.", "Llama."],
            "max-autotune@layers": ["Because of air.", "Alpaca."],
            "reduce-overhead+static": "failed",  # named in the table above, not among the answers
        },
        PROMPTS + PROMPTS,  # a batch twice the prompts: its repeated rows go
    )
    assert console_table(results).splitlines()[-5:] == [
        "",
        "Answers: eager's, and each mode's that differs from it:",
        "prompt                eager            modes that differ",
        "Why is the sky blue?  Because of air.  reduce-overhead: Because of dust.",
        "What's your name?     Llama.           max-autotune, max-autotune@layers: Alpaca.",
    ]
    assert markdown(results).splitlines()[-4:] == [
        "| prompt | eager | modes that differ |",
        "|---|---|---|",
        "| Why is the sky blue? | Because of air. | **reduce-overhead**: Because of dust. |",
        "| What's your name? | Llama. | **max-autotune, max-autotune@layers**: Alpaca. |",
    ]


def test_without_eager_the_answers_are_compared_with_the_first_mode_that_ran():
    results = hand_made_report(
        {"max-autotune": "failed", "reduce-overhead": ["Air.", "Llama."], "max-autotune@layers": ["Air.", "Alpaca."]},
        PROMPTS,
    )
    assert console_table(results).splitlines()[-4:] == [
        "Answers: reduce-overhead's (no eager mode ran), and each mode's that differs from it:",
        "prompt                reduce-overhead  modes that differ",
        "Why is the sky blue?  Air.             none",
        "What's your name?     Llama.           max-autotune@layers: Alpaca.",
    ]


def test_markdown_escapes_the_answers_and_the_console_shortens_them():
    prompts = ["Pipe | or *not*?"]
    results = hand_made_report({"eager": ["a|b\nc *d* \\ <s>"], "max-autotune": ["好" * 20]}, prompts)
    assert markdown(results).splitlines()[-1] == (
        "| Pipe \\| or \\*not\\*? | a\\|b<br>c \\*d\\* \\\\ \\<s\\> | **max-autotune**: " + "好" * 20 + " |"
    )
    # each 好 takes two columns of the 32 an answer keeps, the ellipsis one
    assert console_table(results).splitlines()[-1] == "Pipe | or *not*?  a|b\\nc *d* \\ <s>  max-autotune: " + "好" * 15 + "…"


def test_the_reports_have_no_answers_where_the_modes_have_none():
    results = hand_made_report({"eager": None, "max-autotune": None}, PROMPTS)  # a --preset: ids without spelling
    assert console_table(results).splitlines()[-1].startswith("tiny | cpu | float32 | batch 2")
    assert "Answers" not in markdown(results)


def test_statistics_follow_their_definitions():
    records = [{"step": step, "ms": ms} for step, ms in enumerate([50.0, 4.0, 6.0, 5.0])] * 2
    runs = stats.split_runs(records)
    assert len(runs) == 2 and [r["ms"] for r in runs[1]] == [50.0, 4.0, 6.0, 5.0]
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for share in (50, 90, 99):
        assert stats.percentile(values, share) == pytest.approx(numpy.percentile(values, share))
    assert stats.agreement([[1, 2], [3, 4]], [[1, 2], [3, 5]]) == 0.75
    result = {"model_bytes": 1000, "kv_bytes_per_token": 10, "static_cache_mb": None, "peak_bandwidth_gbs": 2.0}
    plan = {"input_len": 100, "max_new_tokens": 4}
    numbers = stats.bandwidth(result, [records[:4]], plan)
    # decode steps 1, 2, 3 attend over 101, 102, 103 tokens; 15 ms in all
    assert numbers["decode_bandwidth_gbs"] == pytest.approx((3 * 1000 + 306 * 10) / 0.015 / 1e9)
    static = stats.bandwidth({**result, "static_cache_mb": 1.0}, [records[:4]], plan)
    assert static["decode_bytes_per_step"] == 1000 + 104 * 10


def test_every_mode_is_held_to_the_median_of_all_the_probes_of_the_sitting():
    """A process whose probes fell on a moment of fast memory does not get a limit of its own."""
    modes = {
        "eager": {"status": "ok", "decode_bandwidth_gbs": 6.0, "stream_probes_gbs": [36.0, 62.0, 61.0]},
        "max-autotune": {"status": "ok", "decode_bandwidth_gbs": 24.0, "stream_probes_gbs": [37.0, 35.0, 38.0]},
        "reduce-overhead": {"status": "failed", "error": "boom"},
        "reduce-overhead@region": {"status": "ok", "decode_bandwidth_gbs": None, "stream_probes_gbs": [60.0, 34.0, 30.0]},
    }
    assert stats.against_the_limit(modes) == 37.0  # the middle of the nine
    assert modes["eager"]["stream_bandwidth_gbs"] == modes["max-autotune"]["stream_bandwidth_gbs"] == 37.0
    assert modes["eager"]["decode_bandwidth_pct_of_stream"] == pytest.approx(100 * 6 / 37)
    assert modes["max-autotune"]["decode_bandwidth_pct_of_stream"] == pytest.approx(100 * 24 / 37)
    assert modes["reduce-overhead@region"]["decode_bandwidth_pct_of_stream"] is None
    assert "stream_bandwidth_gbs" not in modes["reduce-overhead"]
    assert stats.against_the_limit({"eager": {"status": "ok", "decode_bandwidth_gbs": 1.0, "stream_probes_gbs": []}}) is None


@pytest.mark.slow
def test_layers_scope_cold_and_a_layer_count_in_one_run(graph_mode_site, embedded, tmp_path):
    """--layers makes the embedded model deeper; @layers compiles its decoder layer once; --cold starts each
    compiled mode from an empty cache of its own."""
    report_path = tmp_path / "b.json"
    shared = usage(embedded / "compile")
    result = bench(
        graph_mode_site, embedded,
        "--layers", "3", "--cold", "--modes", "eager,max-autotune@layers", "--batch-size", "2", "--input-len", "12",
        "--max-new-tokens", "5", "--runs", "2", "--output-json", str(report_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["metadata"]["layers"] == 3 and report["metadata"]["cold"] is True
    assert report["metadata"]["model"].endswith(", 3 layers")
    layers = report["modes"]["max-autotune@layers"]
    assert (layers["scope"], layers["compile_cache"], layers["graphs"]) == ("layers", "cold", 2)
    assert layers["token_agreement_vs_eager"] == 1.0
    assert usage(embedded / "compile") == shared  # --cold: nothing went into the shared cache root


def warm(site: Path, cache: Path, *arguments: str):
    return run_cli("warm", *arguments, env={**python_path(site), "LLAMA_GRAPH_PATCH_CACHE": str(cache)}, timeout=1800)


@pytest.mark.slow
def test_warm_fills_the_cache_that_status_shows_and_bench_finds(graph_mode_site, tiny_checkpoint, tmp_path):
    cache = tmp_path / "cache"
    shapes = ("--model-path", str(tiny_checkpoint), "--batch-size", "2", "--input-len", "10", "--max-new-tokens", "4")
    result = warm(graph_mode_site, cache, *shapes, "--modes", "max-autotune", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    (row,) = summary["modes"]
    assert (row["mode"], row["status"], row["graphs"], row["cache_before"]) == ("max-autotune", "ok", 2, "cold")
    assert row["seconds"] > 0 and row["files_added"] > 0 and row["mb_added"] > 0
    assert summary["compile_cache"] == str(cache / "compile") and summary["compile_files"] == row["files_added"]
    # its second process loaded the stored code instead of tracing
    assert row["next_start"] == "precompiled" and 0 < row["next_load_s"] < row["next_first_call_s"] < row["seconds"]

    env = {**python_path(graph_mode_site), "LLAMA_GRAPH_PATCH_CACHE": str(cache)}
    status = json.loads(run_cli("status", "--json", env=env).stdout)["cache"]
    artifacts = {artifact["kind"]: artifact for artifact in status.pop("artifacts")}
    assert status == {
        "root": str(cache), "compile": str(cache / "compile"),
        "compile_files": summary["compile_files"], "compile_mb": round(summary["compile_mb"], 3),
    }
    assert sorted(artifacts) == ["artifacts", "precompiled"]
    stored = artifacts["precompiled"]
    assert (stored["mode"], stored["scope"], stored["kv_cache"], stored["rows"]) == ("max-autotune", "model", "growing", "2+")
    assert stored["phases"] == ["prefill", "decode"] and stored["mb"] > 0 and stored["shape"]["num_hidden_layers"] == 2
    printed = run_cli("status", env=env).stdout
    assert "precompiled: max-autotune@model, growing KV cache, 2 layers x" in printed and "prefill + decode" in printed

    report_path = tmp_path / "b.json"
    bench_run = bench(graph_mode_site, cache, *shapes, "--modes", "max-autotune", "--output-json", str(report_path))
    assert bench_run.returncode == 0, bench_run.stderr[-3000:]
    measured = json.loads(report_path.read_text())["modes"]["max-autotune"]
    assert (measured["compile_cache"], measured["graphs"]) == ("precompiled", 0)


@pytest.mark.parametrize(
    "arguments, code, message",
    [
        (["--modes", "eager"], 2, "eager compiles nothing, so there is nothing to warm"),
        (["--modes", "turbo"], 2, "unknown mode turbo"),
        (["--batch-size", "x"], 2, "invalid positive value"),
        (["--nproc-per-node", "4"], 2, "--nproc-per-node 4 does not divide num_key_value_heads 2"),
    ],
)
def test_warm_refusals(graph_mode_site, tmp_path, arguments, code, message):
    result = warm(graph_mode_site, tmp_path, *arguments)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_warm_refuses_an_unpatched_transformers(pristine_site, tmp_path):
    result = warm(pristine_site, tmp_path, "--modes", "max-autotune")
    assert result.returncode == 7 and "run: llama-graph-patch apply" in result.stderr


def test_warm_prints_a_table_of_what_it_stored():
    from patcher.bench.warm import table

    summary = {
        "compile_cache": "/c/compile", "compile_files": 124, "compile_mb": 9.3, "torchinductor_cache_dir": None,
        "model": "tiny", "modes": [
            {"mode": "max-autotune", "status": "ok", "error": None, "seconds": 42.4, "graphs": 2,
             "cache_before": "cold", "files_added": 110, "mb_added": 5.0, "next_start": "precompiled",
             "next_first_call_s": 2.8, "next_load_s": 1.72},
            {"mode": "max-autotune@layers", "status": "ok", "error": None, "seconds": 30.1, "graphs": 2,
             "cache_before": "cold", "files_added": 12, "mb_added": 1.0, "next_start": "warm",
             "next_first_call_s": 9.5, "next_load_s": None},
            {"mode": "reduce-overhead@layers", "status": "failed", "error": "boom", "seconds": None, "graphs": None,
             "cache_before": None, "files_added": 0, "mb_added": 0.0},
        ],
    }
    lines = table(summary).splitlines()
    assert lines[0].split() == ["mode", "seconds", "graphs", "cache", "before", "stored", "next", "start"]
    assert lines[1].split() == ["max-autotune", "42.4", "2", "cold", "+110", "files,", "+5.0", "MB", "precompiled:",
                                "loads", "in", "1.7", "s,", "first", "call", "2.8", "s"]
    assert lines[2].split()[-6:] == ["warm:", "traces", "again,", "first", "call", "9.5", "s"][-6:]
    assert lines[3].split()[:2] == ["reduce-overhead@layers", "FAILED:"]
    assert lines[4] == "compile cache /c/compile: 124 files, 9.3 MB"
