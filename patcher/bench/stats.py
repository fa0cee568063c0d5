"""From a mode's step timing records and worker result to the numbers of the report.

Definitions (the guide's): prefill = the first step of a generate call; decode = every later step.
"""

from __future__ import annotations

import json
import os
import statistics


def read_records(path: str | os.PathLike) -> list[dict]:
    """The step timing records in a JSON-lines timing file; none if the file was never written."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as source:
        return [json.loads(line) for line in source]


def split_runs(records: list[dict]) -> list[list[dict]]:
    """Timing records of consecutive generate calls, one list per call (each starts at step 0)."""
    runs: list[list[dict]] = []
    for record in records:
        if record["step"] == 0:
            runs.append([])
        runs[-1].append(record)
    return runs


def percentile(values: list[float], share: int) -> float:
    """Linear interpolation between closest ranks, numpy's default."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[share - 1]


def summarize(result: dict, records: list[dict], plan: dict, eager_tokens: list | None) -> dict:
    """The report's numbers for one mode that ran."""
    runs = split_runs(records)
    if len(runs) != plan["runs"] or any(len(run) != plan["max_new_tokens"] for run in runs):
        raise ValueError(
            f"expected {plan['runs']} runs of {plan['max_new_tokens']} timed steps, got "
            f"{[len(run) for run in runs]}: is the transformers in use patched?"
        )
    prefill = [run[0]["ms"] for run in runs]
    decode = [step["ms"] for run in runs for step in run[1:]]
    summary = {
        "status": "ok",
        "error": None,
        "prefill_ms": statistics.fmean(prefill),
        "decode_ms_mean": statistics.fmean(decode) if decode else None,
        "decode_ms_stdev": statistics.stdev(decode) if len(decode) > 1 else None,
        "decode_ms_p50": percentile(decode, 50) if decode else None,
        "decode_ms_p90": percentile(decode, 90) if decode else None,
        "decode_ms_p99": percentile(decode, 99) if decode else None,
        "tokens_per_s": plan["batch_size"] * 1000 / statistics.fmean(decode) if decode else None,
        "new_tokens": result["new_tokens"][-1],
        "new_tokens_as_asked": all(count == plan["max_new_tokens"] for count in result["new_tokens"]),
        "warmup_s": result["warmup_s"],
        "compile_s": compile_seconds(result["call_s"]),
        "graphs": result["graphs"],
        "graphs_per_rank": result.get("graphs_per_rank"),
        "cuda_graphs": result["cuda_graphs"],
        "compile_cache": result["compile_cache"],
        "frozen": result.get("frozen"),
        "precompiled_load_s": result.get("precompiled_load_s"),
        "peak_memory_mb": result["peak_memory_mb"],
        "peak_memory_mb_per_rank": result.get("peak_memory_mb_per_rank"),
        "token_agreement_vs_eager": agreement(result["tokens"], eager_tokens),
        "model_bytes": result["model_bytes"],
        "static_cache_mb": result["static_cache_mb"],
        "answers": result["answers"],
        "tokens": result["tokens"],
        "stream_probes_gbs": result["stream_probes_gbs"],
        "step_ms": [step["ms"] for step in runs[-1]],
    }
    summary.update(bandwidth(result, runs, plan))
    return summary


def compile_seconds(call_s: list[float]) -> float | None:
    """The first generate call's time beyond a steady-state call of the same shape (the median of the later
    calls): what compiling, and loading compiled code, cost. None without a later call."""
    if len(call_s) < 2:
        return None
    return max(0.0, call_s[0] - statistics.median(call_s[1:]))


def agreement(tokens: list[list[int]], eager: list[list[int]] | None) -> float | None:
    """Share of generated token positions equal to eager's."""
    if eager is None:
        return None
    pairs = [(a, b) for row, eager_row in zip(tokens, eager) for a, b in zip(row, eager_row)]
    return sum(a == b for a, b in pairs) / len(pairs)


def bandwidth(result: dict, runs: list[list[dict]], plan: dict) -> dict:
    """Bytes a decode step must read (the weights it multiplies with, plus the keys and values it attends over)
    per second, and on CUDA that as a share of the device's spec peak (the share of what the machine
    streamed is the sitting's: `against_the_limit`).

    With the growing cache, decode step t attends over input_len + t tokens; the static cache always
    reads its full length, input_len + max_new_tokens.
    """
    read = 0
    seconds = 0.0
    for run in runs:
        for step in run[1:]:
            attended = plan["input_len"] + plan["max_new_tokens"] if result["static_cache_mb"] else plan["input_len"] + step["step"]
            read += result["model_bytes"] + attended * result["kv_bytes_per_token"]
            seconds += step["ms"] / 1000
    achieved = read / seconds / 1e9 if seconds else None
    peak = result["peak_bandwidth_gbs"]
    return {
        "decode_bytes_per_step": read / max(1, sum(len(run) - 1 for run in runs)),
        "decode_bandwidth_gbs": achieved,
        "peak_bandwidth_gbs": peak,
        "decode_bandwidth_pct_of_peak": 100 * achieved / peak if achieved and peak else None,
    }


def against_the_limit(modes: dict) -> float | None:
    """The memory bandwidth of the sitting, the median of every probe the modes that ran took beside their
    measured calls, and each mode's decode as a share of it. One figure for all: this machine streams 30-38
    GB/s most of the time and 48-66 for seconds now and then, decode does not follow those moments (in one
    process pairing probes with 45 decode runs, 22 ms with fast probes as with slow ones), and a process whose
    probes fell on them would show half the share for the same speed."""
    ran = [numbers for numbers in modes.values() if numbers["status"] == "ok"]
    probes = [probe for numbers in ran for probe in numbers["stream_probes_gbs"]]
    limit = statistics.median(probes) if probes else None
    for numbers in ran:
        achieved = numbers["decode_bandwidth_gbs"]
        numbers["stream_bandwidth_gbs"] = limit
        numbers["decode_bandwidth_pct_of_stream"] = 100 * achieved / limit if achieved and limit else None
    return limit
