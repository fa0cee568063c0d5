"""One benchmark mode in its own process: load the model, warm up, run the measured generations.

The parent (patcher/bench/runner.py) sets EXE_MODE, GRAPH_MODE and LLAMA_GRAPH_PATCH_STATIC_CACHE
before starting it, and after the warm-up says on stdin when to measure ("measure": every run, "run":
one run, "finish"). The patched greedy_search writes the per-step timing records; this process writes
its result as JSON and reports progress as JSON lines on stdout.

    python -m patcher.bench.worker --plan PLAN.json --result RESULT.json --timing TIMING.jsonl

With --nproc-per-node N the parent starts it through torch.distributed.run instead: each of the N ranks
loads the model and keeps its shard (patcher/bench/sharding.py), rank 0 alone talks with the parent
(patcher/bench/ranks.py) and writes the result and timing of all ranks: per step, the slowest rank's time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from patcher.bench import devices


def main() -> None:
    if "TORCHELASTIC_ERROR_FILE" in os.environ:  # started by torch's launcher: its failure summary shows our error
        from torch.distributed.elastic.multiprocessing.errors import record

        record(parse_and_run)()
    else:
        parse_and_run()


def parse_and_run() -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark mode (started by llama-graph-patch bench).")
    parser.add_argument("--plan", required=True, help="the benchmark plan, JSON written by the parent")
    parser.add_argument("--result", required=True, help="where to write this mode's result")
    parser.add_argument("--timing", required=True, help="the step timing file for the measured runs")
    args = parser.parse_args()
    with open(args.plan, encoding="utf-8") as source:
        plan = json.load(source)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    result = run(plan, args.timing)
    if result is not None:  # rank 0 writes for all ranks
        with open(args.result, "w", encoding="utf-8") as sink:
            json.dump(result, sink)


def progress(**event) -> None:
    """One event for the parent's progress bar; the launcher's ranks share its stdout, so rank 0 speaks for all."""
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(event), flush=True)


class TokenProgress:
    """A generate() streamer that reports generated tokens to the parent, at most ten times a second."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.pending = 0
        self.last = 0.0

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        self.pending += 1
        if time.monotonic() - self.last > 0.1:
            self.flush()

    def end(self) -> None:
        self.flush()
        self.prompt_seen = False

    def flush(self) -> None:
        if self.pending:
            progress(event="tokens", count=self.pending)
        self.pending = 0
        self.last = time.monotonic()


def run(plan: dict, timing_path: str) -> dict | None:
    """The result of this mode (on rank 0; None on the other ranks)."""
    import torch

    from patcher.bench import ranks as ranks_module
    from patcher.bench.sharding import shard

    device = devices.rank_device(devices.resolve_device(plan["device"], torch), torch)
    ranks = ranks_module.join(device.type, plan["collective_timeout_s"])
    dtype = devices.resolve_dtype(plan["dtype"], device, torch)
    progress(event="phase", name="loading")
    model, tokenizer = load(plan, device, dtype, torch)
    if ranks.size > 1:
        from torch.distributed.device_mesh import init_device_mesh

        shard(model, init_device_mesh(device.type, (ranks.size,)))
    inputs = tokenized_prompts(plan, tokenizer, model.config.vocab_size, device)
    with torch.no_grad():
        call_s, sequences, limit = generate_calls(
            plan, model, inputs, generate_options(plan, tokenizer), ranks, timing_path
        )
    generated = sequences[-1][:, plan["input_len"] :]
    own = rank_result(model, device, torch, generated, call_s, ranks_module.rank_path(timing_path, ranks), limit)
    every_rank = ranks.gather(own)
    ranks.leave()
    if not ranks.first:
        return None
    check_ranks_agree(every_rank)
    if ranks.size > 1:
        write_records(timing_path, slowest_steps([rank["timing"] for rank in every_rank]))
    measured = sequences[plan["warmup_runs"] :]
    result = mode_result(plan, model, tokenizer, device, dtype, ranks.size, every_rank, measured, generated)
    return {**result, "stream_probes_gbs": limit["probes_gbs"]}


def tokenized_prompts(plan: dict, tokenizer, vocab_size: int, device):
    """The plan's prompts, one per row, left-padded to its input length."""
    prompts = [plan["prompts"][row % len(plan["prompts"])] for row in range(plan["batch_size"])]
    inputs = tokenizer(
        prompts, return_tensors="pt", padding="max_length", max_length=plan["input_len"], truncation=True
    ).to(device)
    if int(inputs["input_ids"].max()) >= vocab_size:
        raise ValueError(
            f"the tokenizer made ids up to {int(inputs['input_ids'].max())} for a model of {vocab_size} "
            "tokens: transformers 4.31 without tokenizers<0.14 adds the special tokens as new ids; "
            "pip install 'tokenizers<0.14'"
        )
    return inputs


def generate_options(plan: dict, tokenizer) -> dict:
    """generate()'s arguments: exactly the asked number of new tokens, the plan's decoding."""
    new_tokens = plan["max_new_tokens"]
    options = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # EOS cannot end a run early
        pad_token_id=tokenizer.pad_token_id,
        **plan["decoding"],
    )
    if plan["decoding"]["num_beams"] == 1:  # generate() takes no streamer with beams
        options["streamer"] = TokenProgress()
    return options


def generate_calls(plan: dict, model, inputs, options: dict, ranks, timing_path: str) -> tuple[list, list, dict]:
    """The warm-up calls, then the measured ones as the parent asks for them: every call's wall time and
    output, warm-up ones first, and the memory bandwidth the process streamed just before each measured call
    (with the peak memory of the calls, which that measurement's buffer would otherwise hide). The patched
    transformers times the measured calls' steps."""
    import torch

    from patcher.bench.ranks import rank_path

    call_s, sequences = [], []
    device = inputs["input_ids"].device
    synchronize = device_synchronizer(device)

    def generate():
        torch.manual_seed(plan["seed"])  # every mode, call and rank draws the same random numbers
        started = time.perf_counter()
        output = model.generate(**inputs, **options)
        synchronize()
        ranks.barrier()  # the next call starts together on every rank
        call_s.append(time.perf_counter() - started)
        sequences.append(output)
        if "streamer" not in options:  # the progress bar moves a whole call at a time
            progress(event="tokens", count=plan["max_new_tokens"])

    os.environ.pop("LLAMA_GRAPH_PATCH_TIMING", None)
    for run_index in range(plan["warmup_runs"]):
        progress(event="phase", name="warm-up (compiles in graph modes)" if run_index == 0 else "warm-up")
        generate()
    limit = {"peak_mb": devices.peak_memory_mb(device, torch), "probes_gbs": []}

    def stream():
        # Beside each measured call, not once per process: the report holds every mode to the median of all
        # the probes of the sitting (stats.against_the_limit says why).
        limit["peak_mb"] = max(limit["peak_mb"], devices.peak_memory_mb(device, torch))
        limit["probes_gbs"].append(devices.stream_bandwidth_gbs(device, torch, synchronize))
        ranks.barrier()  # no rank starts the call while another still reads its buffer

    # The parent says when to measure: all runs at once, or one at a time between other modes' runs.
    progress(event="ready")
    os.environ["LLAMA_GRAPH_PATCH_TIMING"] = rank_path(timing_path, ranks)
    while (command := ranks.next_command()) != "finish":
        progress(event="phase", name="measuring")
        for _ in range(plan["runs"] if command == "measure" else 1):
            stream()
            generate()
        progress(event="ran")
    if plan["runs"] and len(sequences) == plan["warmup_runs"]:
        raise RuntimeError("the parent asked for no measured run")
    return call_s, sequences, limit


def rank_result(model, device, torch, generated, call_s: list, timing_path: str, limit: dict) -> dict:
    """What this rank saw, for rank 0 to gather: its tokens, call times, graphs, memory and step times."""
    from patcher.bench.stats import read_records

    return {
        "tokens": generated.tolist(),
        "call_s": call_s,
        "graphs": patched(model)["graphs"],
        "peak_memory_mb": max(limit["peak_mb"], devices.peak_memory_mb(device, torch)),
        "timing": read_records(timing_path),
    }


def check_ranks_agree(every_rank: list[dict]) -> None:
    for rank, other in enumerate(every_rank[1:], start=1):
        if other["tokens"] != every_rank[0]["tokens"]:
            raise RuntimeError(f"rank {rank} generated other tokens than rank 0: the ranks' logits differ")


def mode_result(
    plan: dict, model, tokenizer, device, dtype, world_size: int, every_rank: list, measured: list, generated
) -> dict:
    """This mode's result as the parent reads it: rank 0's tokens, the slowest rank's times, what the patched
    transformers did, and the sizes the bandwidth figures need (one rank's share)."""
    import torch

    from patcher.bench.sharding import weight_bytes_read

    seen = patched(model)
    cpu = runtime_module("compile_cache").cpu_name()
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    element = torch.finfo(dtype).bits // 8
    rows = plan["batch_size"] * plan["decoding"]["num_beams"]
    return {
        "device": devices.device_name(device, torch, cpu),
        "host_cpu": cpu,
        "device_type": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "world_size": world_size,
        "new_tokens": [int(sequence.shape[1]) - plan["input_len"] for sequence in measured],
        "tokens": every_rank[0]["tokens"],
        "answers": None if plan["preset"] else tokenizer.batch_decode(generated, skip_special_tokens=True),
        "warmup_s": max(rank["call_s"][0] for rank in every_rank) if plan["warmup_runs"] else None,
        "call_s": [max(times) for times in zip(*(rank["call_s"] for rank in every_rank))],
        "graphs": every_rank[0]["graphs"],
        "graphs_per_rank": [rank["graphs"] for rank in every_rank],
        "cuda_graphs": seen["cuda_graphs"],
        "compile_cache": seen["compile_cache"],
        "frozen": seen["frozen"],  # the weights are constants of the decode graph (LLAMA_GRAPH_PATCH_FREEZE)
        "precompiled_load_s": seen["precompiled_load_s"],
        "peak_memory_mb": max(rank["peak_memory_mb"] for rank in every_rank),
        "peak_memory_mb_per_rank": [rank["peak_memory_mb"] for rank in every_rank],
        # weights a decode step reads on one rank (what each card reads), with the embedding rows of its tokens
        "model_bytes": weight_bytes_read(model) + rows * config.hidden_size * element,
        # keys and values of every layer that one rank holds, per token of all rows (batch x beams)
        "kv_bytes_per_token": 2 * config.num_hidden_layers * config.num_key_value_heads // world_size * head_dim
        * element * rows,
        "static_cache_mb": seen["static_kv_cache_mb"],
        "peak_bandwidth_gbs": devices.peak_bandwidth_gbs(device, torch),
    }


def write_records(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(record) + "\n" for record in records)


def slowest_steps(per_rank: list[list[dict]]) -> list[dict]:
    """One timing record per step, rank 0's with the slowest rank's time: the step is done when all are."""
    if len({len(records) for records in per_rank}) != 1:
        raise RuntimeError(f"the ranks timed different numbers of steps: {[len(records) for records in per_rank]}")
    return [{**steps[0], "ms": max(step["ms"] for step in steps)} for steps in zip(*per_rank)]


def runtime_module(name: str):
    """A module of the graph-mode runtime in the patched transformers this worker runs (the bench refuses
    to start on a transformers without it)."""
    import importlib

    return importlib.import_module(f"transformers.generation._llama_graph_patch.{name}")


def patched(model) -> dict:
    """What the patched transformers did for the model's latest generate call (its describe())."""
    return runtime_module("state").describe(model)


def device_synchronizer(device):
    """The patched transformers' wait for the device's queued work, as its step timing waits."""
    return runtime_module("timing").synchronizer(device)


def load(plan: dict, device, dtype, torch):
    """Model and slow tokenizer as the upstream benchmark loads them: left padding, pad token = EOS."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(plan["tokenizer_path"], use_fast=False, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    if plan["preset"]:
        from patcher.bench.models import PRESETS

        torch.manual_seed(plan["seed"])  # the same random weights in every mode's process
        with torch.device(device):
            shape = {**PRESETS[plan["preset"]], **({"num_hidden_layers": plan["layers"]} if plan["layers"] else {})}
            model = LlamaForCausalLM._from_config(LlamaConfig(**shape), torch_dtype=dtype)
    else:
        model = LlamaForCausalLM.from_pretrained(plan["model_path"], torch_dtype=dtype).to(device)
    return model.eval(), tokenizer


if __name__ == "__main__":
    main()
