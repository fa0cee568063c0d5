"""Run one benchmark mode in a fresh process, with a progress bar fed by the worker's JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

# The guide's switches for each mode (read by the patched greedy_search).
MODE_ENVIRONMENT = {
    "eager": {"EXE_MODE": "eager"},
    "max-autotune": {"EXE_MODE": "dynamo", "GRAPH_MODE": "max-autotune"},
    "reduce-overhead": {"EXE_MODE": "dynamo", "GRAPH_MODE": "reduce-overhead"},
}


class ModeRun:
    """What one mode's process left behind: its result, its timing records, or why it failed."""

    def __init__(self, mode: str, folder: Path) -> None:
        self.mode = mode
        self.result_path = folder / f"{mode}.result.json"
        self.timing_path = folder / f"{mode}.timing.jsonl"
        self.log_path = folder / f"{mode}.log"
        self.error: str | None = None

    def result(self) -> dict:
        return json.loads(self.result_path.read_text(encoding="utf-8"))

    def records(self) -> list[dict]:
        if not self.timing_path.exists():
            return []
        return [json.loads(line) for line in self.timing_path.read_text(encoding="utf-8").splitlines()]


def run_mode(mode: str, plan: dict, plan_path: Path, folder: Path, timeout: float | None) -> ModeRun:
    from tqdm import tqdm

    run = ModeRun(mode, folder)
    environment = {**os.environ, **MODE_ENVIRONMENT[mode]}
    environment["LLAMA_GRAPH_PATCH_STATIC_CACHE"] = "1" if plan["static_cache"] else "0"
    environment.pop("LLAMA_GRAPH_PATCH_TIMING", None)  # the worker sets it for the measured runs only
    command = [
        sys.executable, "-m", "patcher.bench.worker",
        "--plan", str(plan_path), "--result", str(run.result_path), "--timing", str(run.timing_path),
    ]
    total = (plan["warmup_runs"] + plan["runs"]) * plan["max_new_tokens"]
    timed_out = threading.Event()
    with open(run.log_path, "w", encoding="utf-8") as log, tqdm(
        total=total, desc=mode.rjust(15), unit="tok", dynamic_ncols=True, file=sys.stderr
    ) as bar:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=environment)
        timer = threading.Timer(timeout or 0, lambda: (timed_out.set(), process.kill()))
        if timeout:
            timer.start()
        try:
            for line in process.stdout:
                event = parse_event(line)
                if event is None:
                    log.write(line)
                elif event["event"] == "tokens":
                    bar.update(event["count"])
                elif event["event"] == "phase":
                    bar.set_postfix_str(event["name"])
            process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
    if timed_out.is_set():
        run.error = f"timed out after {timeout:g} s (--mode-timeout)"
    elif process.returncode != 0:
        run.error = last_error_line(run.log_path) or f"exit code {process.returncode}"
    return run


def parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def last_error_line(log: Path) -> str | None:
    """The last line of the worker's traceback: the exception and its message."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else None
