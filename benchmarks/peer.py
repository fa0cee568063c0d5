"""Our decode beside the peer's, in one sitting: transformers' own static KV cache + torch.compile (the current
release, in an environment of its own) against `llama-graph-patch bench` on the patched 4.31.0.

    .venv/bin/python benchmarks/peer.py --preset smollm2-135m --batch-size 1 4 --input-len 64 \\
        --max-new-tokens 64 --output benchmarks/DATE-cpu-peer.md

For each batch size: the peer, then our bench (eager, max-autotune, reduce-overhead, interleaved), then the
peer again, so that a machine's slow spell falls on both; the peer's figure is the mean of its two runs.
Same config (a --preset's, random weights), batch, lengths and dtype (fp32) on both sides. The peer's
environment is made on first use in results/peer-venv (pip: torch as this one's, transformers unpinned).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from patcher.bench.models import PRESETS

HERE = Path(__file__).parent
PEER_VENV = HERE.parent / "results" / "peer-venv"
OUR_MODES = "eager,max-autotune,reduce-overhead"


def peer_python() -> Path:
    """The peer environment's interpreter, made on first use: torch as ours, the newest transformers."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"making the peer environment in {PEER_VENV} (pip)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        torch_version = torch.__version__.split("+")[0]
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", "transformers"], check=True)
    return python


def peer(python: Path, config: dict, batch: int, args: argparse.Namespace) -> dict:
    command = [
        str(python), str(HERE / "peer_static_compile.py"), "--config", json.dumps(config), "--batch-size", str(batch),
        "--input-len", str(args.input_len), "--max-new-tokens", str(args.max_new_tokens), "--runs", str(args.runs),
    ]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def ours(batch: int, args: argparse.Namespace, folder: Path) -> dict:
    report = folder / f"ours-batch-{batch}.json"
    command = [
        str(Path(sys.executable).with_name("llama-graph-patch")), "bench", "--preset", args.preset,
        "--batch-size", str(batch), "--input-len", str(args.input_len), "--max-new-tokens", str(args.max_new_tokens),
        "--modes", OUR_MODES, "--runs", str(args.runs), "--interleave", "--dtype", "float32", "--device", "cpu",
        "--output-json", str(report),
        *(["--layers", str(args.layers)] if args.layers else []),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["smollm2-135m", "tinyllama-1.1b"], default="smollm2-135m")
    parser.add_argument("--layers", type=int, help="fewer decoder layers than the preset's")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the table and the runs' figures here as Markdown")
    args = parser.parse_args()
    config = {**PRESETS[args.preset], **({"num_hidden_layers": args.layers} if args.layers else {})}
    python = peer_python()
    rows, details = [], []
    with tempfile.TemporaryDirectory() as folder:
        for batch in args.batch_size:
            before = peer(python, config, batch, args)
            report = ours(batch, args, Path(folder))
            after = peer(python, config, batch, args)
            theirs = statistics.fmean([before["decode_ms_median"], after["decode_ms_median"]])
            modes = {mode: numbers["decode_ms_p50"] for mode, numbers in report["modes"].items() if numbers["status"] == "ok"}
            best = min((mode for mode in modes if mode != "eager"), key=modes.get)
            rows.append(
                f"| {batch} | {modes['eager']:.2f} | {modes['max-autotune']:.2f} | {modes['reduce-overhead']:.2f} | "
                f"{theirs:.2f} ({before['decode_ms_median']:.2f}, {after['decode_ms_median']:.2f}) | "
                f"{modes[best] / theirs:.2f}x ({best}) |"
            )
            details.append({"batch": batch, "peer": [before, after], "ours": report["modes"], "metadata": report["metadata"]})
    layers = f", {args.layers} layers" if args.layers else ""
    table = [
        f"Decode ms per step (median), --preset {args.preset}{layers}, fp32, prompt {args.input_len}, "
        f"{args.max_new_tokens} new tokens; peer: transformers {details[0]['peer'][0]['transformers']} static cache "
        f"+ torch.compile (before and after ours), torch {details[0]['peer'][0]['torch']}; "
        f"host CPU: {details[0]['metadata'].get('host_cpu', '?')}",
        "",
        "command: `" + " ".join(["python", *sys.argv]) + "`",
        "",
        "| batch | eager | max-autotune | reduce-overhead | peer (runs) | our best / peer |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    print("\n".join(table))
    if args.output:
        args.output.write_text("\n".join(table) + "\n\n```json\n" + json.dumps(details, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
