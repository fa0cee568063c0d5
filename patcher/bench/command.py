"""`llama-graph-patch bench`: check what would run, run each mode in its own process, report.

Also takes the upstream benchmark_llama.py flags (--model_path, --execute_mode, --graph_mode), which
run the single mode they name, so the guide's commands work with `llama-graph-patch bench` in front.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from patcher import __version__
from patcher.bench import report, runner, stats
from patcher.bench.modes import GRAMMAR, GUIDE_MODES, Mode, parse_mode, parse_modes
from patcher.bench.setup import Setup, add_model_arguments, add_workload_arguments, non_negative, positive, prepare, warn
from patcher.errors import BenchModeFailed, UsageError



def add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="run eager, max-autotune and reduce-overhead, each in its own process, and report them",
        description="Benchmark generation of a Llama (greedy by default) in the guide's three modes, each in a "
        "fresh process, with the patched transformers' device-synchronized step timing. Prefill is the first step, decode "
        "the mean of the later steps; compile s is the first generate call's time beyond a steady-state one. "
        "Without --model-path it runs the embedded tiny Llama (random weights).",
    )
    add_model_arguments(bench)
    modes = bench.add_argument_group("modes")
    modes.add_argument(
        "--modes",
        help=f"comma-separated (default: {','.join(GUIDE_MODES)}); a mode is {GRAMMAR}, e.g. "
        "--modes eager,max-autotune,max-autotune@layers,reduce-overhead+static",
    )
    modes.add_argument("--execute_mode", "--execute-mode", choices=["dynamo", "eager"], help="upstream flag")
    modes.add_argument("--graph_mode", "--graph-mode", choices=list(GUIDE_MODES)[1:], help="upstream flag")
    modes.add_argument(
        "--static-cache", action="store_true", help="use the fixed-size KV cache (needs apply --static-cache)"
    )
    modes.add_argument(
        "--cold",
        action="store_true",
        help="give each compiled mode an empty compile cache of its own, so that compile s does not depend on "
        "what this machine has cached (default: the shared cache, reported as cold or warm)",
    )
    work = add_workload_arguments(bench)
    work.add_argument("--warmup-runs", type=non_negative, default=1, help="generate calls before measuring (1)")
    work.add_argument("--runs", type=positive, default=1, help="measured generate calls (1)")
    work.add_argument(
        "--interleave",
        action="store_true",
        help="warm every mode up first, then alternate their measured runs, so that a shared machine's slow "
        "spells fall on all modes alike (the modes' processes are alive together: mind device memory)",
    )
    work.add_argument(
        "--mode-timeout", type=float, metavar="S", help="give up on a mode whose loading and warm-up pass S seconds"
    )
    out = bench.add_argument_group("output")
    out.add_argument("--output-json", metavar="PATH")
    out.add_argument("--output-md", metavar="PATH")
    out.add_argument("--plot", metavar="PATH", help="PNG of per-step latency (needs matplotlib)")
    out.add_argument(
        "--keep-logs",
        metavar="DIR",
        help="copy each mode's worker log (its stderr: warnings, and torch's own logs such as TORCH_LOGS=recompiles) "
        "into DIR, also when every mode succeeds",
    )
    bench.set_defaults(run=run_bench)


def chosen_modes(args: argparse.Namespace) -> list[Mode]:
    if args.execute_mode or args.graph_mode:
        if args.modes:
            raise UsageError("--modes and the upstream --execute_mode/--graph_mode flags exclude each other")
        name = "eager" if args.execute_mode == "eager" else args.graph_mode or "max-autotune"
        return [parse_mode(name, args.static_cache)]
    return parse_modes(args.modes or ",".join(GUIDE_MODES), args.static_cache)


def run_bench(args: argparse.Namespace) -> int:
    modes = chosen_modes(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'llama-graph-patch[plot]'") from None
    setup = prepare(
        args,
        any(mode.static_cache for mode in modes),
        warmup_runs=args.warmup_runs,
        runs=args.runs,
        interleave=args.interleave,
        cold=args.cold,
    )
    warn(setup)
    folder, plan_path = runner.work_folder(setup.plan, "bench")

    def write_reports(runs: list[runner.ModeRun]) -> dict:
        results = build_report(runs, modes, setup)
        for path, write in ((args.output_json, report.write_json), (args.output_md, report.write_markdown)):
            if path:
                write(results, Path(path))
        return results

    runs = runner.run_modes(modes, setup.plan, plan_path, folder, args.mode_timeout, finished=write_reports)
    if args.keep_logs:
        Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
        for run in runs:
            shutil.copyfile(run.log_path, Path(args.keep_logs) / run.log_path.name)
    results = write_reports(runs)
    print(report.console_table(results))
    if args.plot:
        report.plot(results, Path(args.plot))
    failed = [run for run in runs if results["modes"][run.mode]["status"] != "ok"]
    if failed:
        reasons = "; ".join(f"{run.mode}: {results['modes'][run.mode]['error']}" for run in failed)
        raise BenchModeFailed(f"{len(failed)} of {len(runs)} modes failed ({reasons}); worker logs in {folder}")
    shutil.rmtree(folder)
    return 0


def mode_report(run: runner.ModeRun, result: dict | None, plan: dict, eager_tokens: list | None, scope: str | None) -> dict:
    """One mode's figures and scope, or why it failed: the worker's error, timing records that do not add
    up, or fewer new tokens than asked."""
    if run.error is not None:
        return failed(run, run.error)
    try:
        numbers = stats.summarize(result, run.records(), plan, eager_tokens)
    except (RuntimeError, ValueError) as error:
        return failed(run, str(error))
    if not numbers["new_tokens_as_asked"]:
        return failed(run, f"generated {result['new_tokens']} new tokens, not {plan['max_new_tokens']}")
    return {**numbers, "scope": scope}


def failed(run: runner.ModeRun, error: str) -> dict:
    return {"status": "failed", "error": error, "log": str(run.log_path)}


def build_report(runs: list[runner.ModeRun], chosen: list[Mode], setup: Setup) -> dict:
    plan, target = setup.plan, setup.target
    scopes = {mode.name: mode.scope for mode in chosen}
    ok = {run.mode: run.result() for run in runs if run.error is None}
    reference = report.eager_reference(ok)
    eager_tokens = ok[reference]["tokens"] if reference else None
    modes = {run.mode: mode_report(run, ok.get(run.mode), plan, eager_tokens, scopes[run.mode]) for run in runs}
    eager = modes.get(reference, {}).get("decode_ms_mean")
    for numbers in modes.values():
        if numbers["status"] == "ok":
            numbers["decode_speedup_vs_eager"] = eager / numbers["decode_ms_mean"] if eager else None
    limit = stats.against_the_limit(modes)
    first = next(iter(ok.values()), {})
    static_sizes = [result["static_cache_mb"] for result in ok.values() if result["static_cache_mb"]]
    metadata = {
        "tool_version": __version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["llama-graph-patch", *sys.argv[1:]]),
        "python": platform.python_version(),
        "host_cpu": first.get("host_cpu") or platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch_version": target.companions.get("torch"),
        "transformers_version": target.transformers_version,
        "torch_npu_version": target.companions.get("torch_npu"),
        "torchair_version": target.companions.get("torchair"),
        "transformers_site_packages": str(target.site_packages),
        "patches": setup.patches,
        "device": first.get("device", plan["device"]),
        "model": setup.model_name,
        "weights": setup.weights,
        "layers": plan["layers"],
        "model_bytes": first.get("model_bytes"),
        "stream_bandwidth_gbs": limit,
        "dtype": first.get("dtype", plan["dtype"]),
        "world_size": plan["nproc_per_node"],
        "batch_size": plan["batch_size"],
        "input_len": plan["input_len"],
        "max_new_tokens": plan["max_new_tokens"],
        "warmup_runs": plan["warmup_runs"],
        "runs": plan["runs"],
        "interleaved": plan["interleave"],
        "cold": plan["cold"],
        "prompts": plan["prompts"],
        "decoding": {**plan["decoding"], "seed": plan["seed"]},
        "static_cache": bool(static_sizes),
        "static_cache_mb": static_sizes[0] if static_sizes else None,
        "modes_not_run": [mode.name for mode in chosen if mode.name not in modes],  # a report written midway
        "warnings": setup.warnings,
    }
    return {"metadata": metadata, "modes": modes}
