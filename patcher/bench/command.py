"""`llama-graph-patch bench`: check what would run, run each mode in its own process, report.

Also takes the upstream benchmark_llama.py flags (--model_path, --execute_mode, --graph_mode), which
run the single mode they name, so the guide's commands work with `llama-graph-patch bench` in front.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from patcher import __version__, installer
from patcher.bench import models, report, runner, stats
from patcher.catalog import patch_names, resolve
from patcher.errors import BenchModeFailed, NotPatched, UsageError
from patcher.locate import find_target
from patcher.policy import check_supported

MODES = tuple(runner.MODE_ENVIRONMENT)


def add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="run eager, max-autotune and reduce-overhead, each in its own process, and report them",
        description="Benchmark greedy generation of a Llama in the guide's three modes, each in a fresh process, "
        "with the patched transformers' device-synchronized step timing. Prefill is the first step, decode "
        "the mean of the later steps. Without --model-path it runs the embedded tiny Llama (random weights).",
    )
    model = bench.add_argument_group("model")
    model.add_argument("--model-path", "--model_path", dest="model_path", help="a Llama checkpoint folder")
    model.add_argument(
        "--preset", choices=sorted(models.PRESETS), help="random weights of this shape, made on the device"
    )
    model.add_argument(
        "--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
        help="auto: float16 on cuda and npu, float32 on cpu",
    )
    model.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "npu"], help="auto: npu, else cuda, else cpu"
    )
    modes = bench.add_argument_group("modes")
    modes.add_argument(
        "--modes",
        help=f"comma-separated, from {', '.join(MODES)} (default: all); a name ending in {runner.STATIC_SUFFIX} runs "
        "that mode with the static KV cache, e.g. --modes eager,reduce-overhead,reduce-overhead+static",
    )
    modes.add_argument("--execute_mode", "--execute-mode", choices=["dynamo", "eager"], help="upstream flag")
    modes.add_argument("--graph_mode", "--graph-mode", choices=MODES[1:], help="upstream flag")
    modes.add_argument(
        "--static-cache", action="store_true", help="use the fixed-size KV cache (needs apply --static-cache)"
    )
    work = bench.add_argument_group("workload")
    work.add_argument("--batch-size", type=positive, default=4, help="prompts per generate call (4)")
    work.add_argument("--input-len", type=positive, default=1024, help="prompts are left-padded to this (1024)")
    work.add_argument("--max-new-tokens", type=positive, default=1024, help="exactly this many per call (1024)")
    work.add_argument("--warmup-runs", type=non_negative, default=1, help="generate calls before measuring (1)")
    work.add_argument("--runs", type=positive, default=1, help="measured generate calls (1)")
    work.add_argument("--prompts", metavar="FILE", help="one prompt per line (default: the guide's four)")
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
    bench.set_defaults(run=run_bench)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def chosen_modes(args: argparse.Namespace) -> list[str]:
    if args.execute_mode or args.graph_mode:
        if args.modes:
            raise UsageError("--modes and the upstream --execute_mode/--graph_mode flags exclude each other")
        if args.execute_mode == "eager":
            return ["eager"]
        return [args.graph_mode or "max-autotune"]
    names = [name.strip() for name in (args.modes or ",".join(MODES)).split(",") if name.strip()]
    unknown = [name for name in names if name.removesuffix(runner.STATIC_SUFFIX) not in MODES]
    if unknown or not names:
        raise UsageError(
            f"unknown mode {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}, "
            f"each optionally with {runner.STATIC_SUFFIX}"
        )
    return list(dict.fromkeys(names))


def run_bench(args: argparse.Namespace) -> int:
    modes = chosen_modes(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'llama-graph-patch[plot]'") from None
    if args.model_path and args.preset:
        raise UsageError("--model-path and --preset name two different models; give one")
    if args.model_path:
        max_positions = models.checkpoint_config(args.model_path).get("max_position_embeddings", 2048)
    elif args.preset:
        max_positions = models.PRESETS[args.preset]["max_position_embeddings"]
    else:
        max_positions = models.EMBEDDED_CONFIG["max_position_embeddings"]
    if args.input_len + args.max_new_tokens > max_positions:
        raise UsageError(
            f"--input-len {args.input_len} + --max-new-tokens {args.max_new_tokens} = "
            f"{args.input_len + args.max_new_tokens} exceeds the model's max_position_embeddings {max_positions}"
        )
    prompts = read_prompts(args.prompts) if args.prompts else list(models.GUIDE_PROMPTS)

    target = find_target()
    status = installer.inspect(target)
    static_cache = args.static_cache or any(mode.endswith(runner.STATIC_SUFFIX) for mode in modes)
    wanted = patch_names(static_cache)
    check_supported(target, resolve(wanted))
    if status.state != "patched" or not set(wanted) <= set(status.patches):
        fix = "llama-graph-patch apply" + (" --static-cache" if static_cache else "")
        raise NotPatched(
            f"the transformers {target.transformers_version} this benchmark would run ({target.site_packages}) is "
            f"{status.state}{' with ' + '+'.join(status.patches) if status.patches else ''}; run: {fix}"
        )

    if args.model_path:
        model_path = tokenizer_path = name = args.model_path
    else:
        model_path = tokenizer_path = str(models.embedded_model())
        name = models.EMBEDDED_NAME
        if args.preset:  # random weights; the embedded tokenizer only turns the prompts into ids
            model_path, name = None, f"--preset {args.preset} (random weights in Llama-2-7B's shape, not Llama-2)"

    plan = {
        "model_path": model_path,
        "tokenizer_path": tokenizer_path,
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "max_new_tokens": args.max_new_tokens,
        "warmup_runs": args.warmup_runs,
        "runs": args.runs,
        "prompts": prompts,
        "static_cache": args.static_cache,
        "interleave": args.interleave,
    }
    folder = Path(tempfile.mkdtemp(prefix="llama-graph-patch-bench-"))
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan), encoding="utf-8")
    runs = runner.run_modes(modes, plan, plan_path, folder, args.mode_timeout)

    weights = "checkpoint" if args.model_path else "random"
    results = build_report(runs, plan, {"model": name, "weights": weights}, target, status.patches)
    print(report.console_table(results))
    for path, write in ((args.output_json, report.write_json), (args.output_md, report.write_markdown)):
        if path:
            write(results, Path(path))
    if args.plot:
        report.plot(results, Path(args.plot))
    failed = [run for run in runs if results["modes"][run.mode]["status"] != "ok"]
    if failed:
        reasons = "; ".join(f"{run.mode}: {results['modes'][run.mode]['error']}" for run in failed)
        raise BenchModeFailed(f"{len(failed)} of {len(runs)} modes failed ({reasons}); worker logs in {folder}")
    shutil.rmtree(folder)
    return 0


def read_prompts(path: str) -> list[str]:
    try:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise UsageError(f"--prompts {path}: {error.strerror}") from None
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts in it (one per line)")
    return prompts


def build_report(runs: list[runner.ModeRun], plan: dict, model: dict, target, patches: list[str]) -> dict:
    ok = {run.mode: run.result() for run in runs if run.error is None}
    reference = "eager" if "eager" in ok else "eager" + runner.STATIC_SUFFIX
    eager_tokens = ok[reference]["tokens"] if reference in ok else None
    modes = {}
    for run in runs:
        try:
            if run.error is not None:
                raise RuntimeError(run.error)
            modes[run.mode] = stats.summarize(ok[run.mode], run.records(), plan, eager_tokens)
            if not modes[run.mode]["new_tokens_as_asked"]:
                raise RuntimeError(f"generated {ok[run.mode]['new_tokens']} new tokens, not {plan['max_new_tokens']}")
        except (RuntimeError, ValueError) as error:
            modes[run.mode] = {"status": "failed", "error": str(error), "log": str(run.log_path)}
    eager = modes.get(reference, {}).get("decode_ms_mean")
    for numbers in modes.values():
        if numbers["status"] == "ok":
            numbers["decode_speedup_vs_eager"] = eager / numbers["decode_ms_mean"] if eager else None
    first = next(iter(ok.values()), {})
    static_sizes = [result["static_cache_mb"] for result in ok.values() if result["static_cache_mb"]]
    metadata = {
        "tool_version": __version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["llama-graph-patch", *sys.argv[1:]]),
        "python": platform.python_version(),
        "host_cpu": report.host_cpu(),
        "platform": platform.platform(),
        "torch_version": target.companions.get("torch"),
        "transformers_version": target.transformers_version,
        "torch_npu_version": target.companions.get("torch_npu"),
        "torchair_version": target.companions.get("torchair"),
        "transformers_site_packages": str(target.site_packages),
        "patches": patches,
        "device": first.get("device", plan["device"]),
        **model,
        "model_bytes": first.get("model_bytes"),
        "dtype": first.get("dtype", plan["dtype"]),
        "batch_size": plan["batch_size"],
        "input_len": plan["input_len"],
        "max_new_tokens": plan["max_new_tokens"],
        "warmup_runs": plan["warmup_runs"],
        "runs": plan["runs"],
        "interleaved": plan["interleave"],
        "prompts": plan["prompts"],
        "static_cache": bool(static_sizes),
        "static_cache_mb": static_sizes[0] if static_sizes else None,
    }
    return {"metadata": metadata, "modes": modes}
