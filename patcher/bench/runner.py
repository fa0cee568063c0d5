"""Run the benchmark modes, each in a fresh process, with a progress bar fed by the worker's JSON lines.

Sequential (the guide's way): each mode loads, warms up and measures, then the next mode starts.
Interleaved (--interleave): every mode's process loads and warms up first, then the measured runs
alternate between the modes, so that a slow spell of a shared machine falls on all modes alike. The
processes are then alive together: mind the device memory of big models.

With --nproc-per-node N a mode's process is torch's launcher (torch.distributed.run), which starts the
N ranks of the worker and ends them all when one fails; its summary in the log names the rank.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from patcher.bench import stats
from patcher.bench.modes import Mode

# What a worker must not inherit when --cold gives it an empty compile cache of its own.
CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def worker_environment(mode: Mode, plan: dict, folder: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one mode's worker: the mode's switches (and `extra` ones), and with --cold a private
    empty cache."""
    environment = {**os.environ, **mode.environment(), **(extra or {})}
    environment.pop("LLAMA_GRAPH_PATCH_TIMING", None)  # the worker sets it for the measured runs only
    if plan["cold"] and mode.compiles:
        for name in CACHE_VARIABLES:
            environment.pop(name, None)
        environment["LLAMA_GRAPH_PATCH_CACHE"] = str(folder / f"{mode.name}.cache")
    return environment


class ModeRun:
    """One mode's worker process, and what it leaves behind: result, timing records, or an error."""

    def __init__(
        self,
        mode: Mode,
        plan: dict,
        plan_path: Path,
        folder: Path,
        timeout: float | None,
        label_width: int,
        environment: dict[str, str] | None = None,
        purpose: str = "",
    ) -> None:
        from tqdm import tqdm

        self.mode = mode.name
        name = mode.name + purpose  # the files of this run in `folder`
        self.result_path = folder / f"{name}.result.json"
        self.timing_path = folder / f"{name}.timing.jsonl"
        self.log_path = folder / f"{name}.log"
        self.error: str | None = None
        self.timeout = timeout
        environment = worker_environment(mode, plan, folder, environment)
        self.ranks = plan["nproc_per_node"]
        command = [
            *launcher(self.ranks), "patcher.bench.worker",
            "--plan", str(plan_path), "--result", str(self.result_path), "--timing", str(self.timing_path),
        ]
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.bar = tqdm(
            total=(plan["warmup_runs"] + plan["runs"]) * plan["max_new_tokens"],
            desc=name.rjust(label_width), unit="tok", dynamic_ncols=True, file=sys.stderr,
        )
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=environment
        )
        self.timed_out = threading.Event()
        self.timer = threading.Timer(timeout or 0, self._kill_for_time)
        if timeout:
            self.timer.start()

    def _kill_for_time(self) -> None:
        self.timed_out.set()
        if self.ranks == 1:
            self.process.kill()
            return
        # The launcher passes SIGTERM on to its ranks and kills what is left after a grace period;
        # a SIGKILL would leave the ranks running without it.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def wait_for(self, wanted: str) -> bool:
        """Read the worker's events until `wanted`; False if the process ended first."""
        for line in self.process.stdout:
            event = parse_event(line)
            if event is None:
                self.log.write(line)
            elif event["event"] == "tokens":
                self.bar.update(event["count"])
            elif event["event"] == "phase":
                self.bar.set_postfix_str(event["name"])
            elif event["event"] == wanted:
                return True
        return False

    def send(self, command: str) -> bool:
        """Tell the worker what to do next; False if it is gone."""
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except OSError:
            return False
        return True

    def wait_until_ready(self) -> bool:
        """Read the worker's events until its warm-up is done, and stop the clock there: the time limit covers
        loading and warm-up (where compilation happens), never the measured runs. False if the worker ended
        first."""
        ready = self.wait_for("ready")
        if ready:
            self.timer.cancel()
        return ready

    def finish(self) -> ModeRun:
        """Wait for the process to end and record why it failed, if it did."""
        self.send("finish")
        self.wait_for("end of output")
        self.process.wait()
        self.timer.cancel()
        self.bar.close()
        self.log.close()
        if self.timed_out.is_set():
            self.error = f"timed out after {self.timeout:g} s (--mode-timeout)"
        elif self.process.returncode != 0:
            self.error = (
                (failed_ranks(self.log_path) if self.ranks > 1 else None)
                or last_error_line(self.log_path)
                or f"exit code {self.process.returncode}"
            )
        elif not self.result_path.exists():
            self.error = "the worker ended without a result"
        return self

    def result(self) -> dict:
        return json.loads(self.result_path.read_text(encoding="utf-8"))

    def records(self) -> list[dict]:
        return stats.read_records(self.timing_path)


def work_folder(plan: dict, purpose: str) -> tuple[Path, Path]:
    """A fresh folder for the workers' files (results, timing, logs), holding the plan they read."""
    folder = Path(tempfile.mkdtemp(prefix=f"llama-graph-patch-{purpose}-"))
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan), encoding="utf-8")
    return folder, plan_path


def run_modes(
    modes: list[Mode],
    plan: dict,
    plan_path: Path,
    folder: Path,
    timeout: float | None,
    finished: Callable[[list[ModeRun]], object] = lambda runs: None,
) -> list[ModeRun]:
    """Every mode in its own worker process. Without interleaving, `finished` gets the runs so far after each
    mode, so that a bench cut off from outside leaves the modes that ended."""
    width = max(len(mode.name) for mode in modes)  # aligns the progress bars
    if not plan["interleave"]:
        runs = []
        for mode in modes:
            run = ModeRun(mode, plan, plan_path, folder, timeout, width)
            if run.wait_until_ready():
                run.send("measure")  # all measured runs at once
            runs.append(run.finish())
            if len(runs) < len(modes):
                finished(runs)
        return runs
    ready = []
    for mode in modes:
        run = ModeRun(mode, plan, plan_path, folder, timeout, width)
        run.wait_until_ready()
        ready.append(run)
    for _ in range(plan["runs"]):
        for run in ready:
            if run.send("run"):
                run.wait_for("ran")
    return [run.finish() for run in ready]


def launcher(ranks: int) -> list[str]:
    """How a mode's process starts: the worker module itself, or torch's launcher with N ranks of it on
    this machine (--standalone: its own rendezvous on a free port; no restarts: a failed rank ends the run)."""
    if ranks == 1:
        return [sys.executable, "-m"]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
        "--max-restarts=0", "-m",
    ]


def failed_ranks(log: Path) -> str | None:
    """From the launcher's failure summary at the end of the log: each failed rank, its exit code, and why
    (the last line of the traceback the worker recorded, or the signal that ended it). A rank ended by a
    signal the launcher did not send comes first: the launcher's "root cause" is the first error recorded,
    which is often a peer's broken connection to the rank that died."""
    text = log.read_text(encoding="utf-8", errors="replace")
    summary = text.rpartition(" FAILED\n")[2].split("=" * 20)[0]
    failures = []
    for entry in re.split(r"^\[\d+\]:\s*$", summary, flags=re.MULTILINE)[1:]:
        rank = re.search(r"^\s*rank\s*:\s*(\d+)", entry, flags=re.MULTILINE)
        exitcode = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", entry, flags=re.MULTILINE)
        traceback = entry.partition("traceback :")[2].split("-" * 20)[0]  # dashes end the entry's section
        why = [line.strip() for line in traceback.splitlines() if line.strip()]
        if rank and exitcode:
            killed = int(exitcode.group(1)) < 0 and int(exitcode.group(1)) != -signal.SIGTERM
            reason = why[-1][:200] if why else "no traceback"
            failures.append((not killed, f"rank {rank.group(1)} failed (exit code {exitcode.group(1)}): {reason}"))
    return "; ".join(message for _, message in sorted(failures, key=lambda failure: failure[0])) or None


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
