"""`llama-graph-patch warm`: fill the compile cache for given shapes, as a deploy or image-build step.

Each mode runs one generate call in a fresh process (the bench's worker) with
LLAMA_GRAPH_PATCH_PRECOMPILE=store, so that the patched transformers compiles its prefill and decode
graphs ahead and keeps them, and torch's caches, in the compile cache. A second fresh process then
generates the same way as the application will and says whether it called the stored code without
tracing ("precompiled") and how long loading it took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from patcher.bench import runner
from patcher.bench.modes import GRAMMAR, Mode, parse_modes
from patcher.bench.setup import add_model_arguments, add_workload_arguments, prepare, warn
from patcher.cache import cache_folder, compile_folder, usage
from patcher.errors import BenchModeFailed, UsageError

DEFAULT_MODES = "max-autotune,reduce-overhead"


def add_warm_parser(commands) -> None:
    warm = commands.add_parser(
        "warm",
        help="compile the given shapes once so that later processes load instead of compiling",
        description="Run one generate call per mode, each in a fresh process, so that the compile cache under "
        "LLAMA_GRAPH_PATCH_CACHE (default ~/.cache/llama-graph-patch) holds what those shapes need, the model "
        "and region scopes' graphs precompiled (called later without tracing); then one more process per mode "
        "checks that a later start loads them. Prints what was stored and how long a load takes. Run it in the "
        "image or on the machine that will serve, with the same model flags, shapes and modes as the "
        "application.",
    )
    add_model_arguments(warm)
    warm.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help=f"comma-separated (default: {DEFAULT_MODES}); a mode is {GRAMMAR}",
    )
    add_workload_arguments(warm)
    warm.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    warm.set_defaults(run=run_warm)


def run_warm(args: argparse.Namespace) -> int:
    modes = parse_modes(args.modes)
    if not all(mode.compiles for mode in modes):
        raise UsageError(f"--modes {args.modes}: eager compiles nothing, so there is nothing to warm")
    setup = prepare(args, any(mode.static_cache for mode in modes), warmup_runs=1, runs=0, interleave=False, cold=False)
    warn(setup)
    folder, plan_path = runner.work_folder(setup.plan, "warm")
    stored = compile_folder()
    rows = []
    for mode in modes:
        before = usage(stored)
        run = warm_one(mode, setup.plan, plan_path, folder, {"LLAMA_GRAPH_PATCH_PRECOMPILE": "store"}, "")
        added = usage(stored) - before
        check = warm_one(mode, setup.plan, plan_path, folder, {}, ".check") if run.error is None else run
        result = run.result() if run.error is None else {}
        checked = check.result() if check.error is None else {}
        error = run.error or check.error
        rows.append(
            {
                "mode": mode.name,
                "status": "ok" if error is None else "failed",
                "error": error,
                "seconds": result.get("warmup_s"),
                "graphs": result.get("graphs"),
                "cache_before": result.get("compile_cache"),
                "files_added": added.files,
                "mb_added": added.mb,
                "next_start": checked.get("compile_cache"),
                "next_first_call_s": checked.get("warmup_s"),
                "next_load_s": checked.get("precompiled_load_s"),
            }
        )
    total = usage(stored)
    summary = {
        "cache_root": str(cache_folder()),
        "compile_cache": str(stored),
        "compile_files": total.files,
        "compile_mb": total.mb,
        "torchinductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "model": setup.model_name,
        "modes": rows,
    }
    print(json.dumps(summary, indent=2) if args.json else table(summary))
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        reasons = "; ".join(f"{row['mode']}: {row['error']}" for row in failed)
        raise BenchModeFailed(f"{len(failed)} of {len(rows)} modes failed ({reasons}); worker logs in {folder}")
    shutil.rmtree(folder)
    return 0


def warm_one(mode: Mode, plan: dict, plan_path: Path, folder: Path, environment: dict, purpose: str) -> runner.ModeRun:
    run = runner.ModeRun(mode, plan, plan_path, folder, None, len(mode.name) + 6, environment, purpose)
    run.send("finish")
    return run.finish()


def next_start(row: dict) -> str:
    """What a later process with these shapes does, as the check run saw it."""
    if row["next_start"] == "precompiled":
        return f"precompiled: loads in {row['next_load_s']:.1f} s, first call {row['next_first_call_s']:.1f} s"
    return f"{row['next_start'] or 'no cache'}: traces again, first call {row['next_first_call_s']:.1f} s"


def table(summary: dict) -> str:
    lines = [f"{'mode':<28} {'seconds':>8} {'graphs':>6}  {'cache before':<12}  {'stored':<22}  next start"]
    for row in summary["modes"]:
        if row["status"] != "ok":
            lines.append(f"{row['mode']:<28} FAILED: {row['error']}")
            continue
        stored = f"+{row['files_added']} files, {row['mb_added']:+.1f} MB"
        lines.append(
            f"{row['mode']:<28} {row['seconds']:>8.1f} {row['graphs']:>6}  {row['cache_before'] or '-':<12}  "
            f"{stored:<22}  {next_start(row)}"
        )
    lines.append(
        f"compile cache {summary['compile_cache']}: {summary['compile_files']} files, {summary['compile_mb']:.1f} MB"
        + (
            f" (inductor's caches in TORCHINDUCTOR_CACHE_DIR={summary['torchinductor_cache_dir']})"
            if summary["torchinductor_cache_dir"]
            else ""
        )
    )
    lines.append(f"model: {summary['model']}")
    return "\n".join(lines)
