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
import resource
import sys
import time


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
    from patcher.bench.sharding import local_bytes, shard
    from patcher.bench.stats import read_records

    device = rank_device(resolve_device(plan["device"], torch), torch)
    ranks = ranks_module.join(device.type, plan["collective_timeout_s"])
    dtype = resolve_dtype(plan["dtype"], device, torch)
    progress(event="phase", name="loading")
    model, tokenizer = load(plan, device, dtype, torch)
    if ranks.size > 1:
        from torch.distributed.device_mesh import init_device_mesh

        shard(model, init_device_mesh(device.type, (ranks.size,)))
    prompts = [plan["prompts"][row % len(plan["prompts"])] for row in range(plan["batch_size"])]
    inputs = tokenizer(
        prompts, return_tensors="pt", padding="max_length", max_length=plan["input_len"], truncation=True
    ).to(device)
    if int(inputs["input_ids"].max()) >= model.config.vocab_size:
        raise ValueError(
            f"the tokenizer made ids up to {int(inputs['input_ids'].max())} for a model of {model.config.vocab_size} "
            "tokens: transformers 4.31 without tokenizers<0.14 adds the special tokens as new ids; "
            "pip install 'tokenizers<0.14'"
        )
    new_tokens = plan["max_new_tokens"]
    options = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # EOS cannot end a run early
        pad_token_id=tokenizer.pad_token_id,
        **plan["decoding"],
    )
    if plan["decoding"]["num_beams"] == 1:  # generate() takes no streamer with beams
        options["streamer"] = TokenProgress()

    os.environ.pop("LLAMA_GRAPH_PATCH_TIMING", None)
    call_s = []  # wall time of every generate call, warm-up ones first
    sequences = []

    def generate():
        torch.manual_seed(plan["seed"])  # every mode, call and rank draws the same random numbers
        started = time.perf_counter()
        output = model.generate(**inputs, **options)
        synchronize(device, torch)
        ranks.barrier()  # the next call starts together on every rank
        call_s.append(time.perf_counter() - started)
        if "streamer" not in options:  # the progress bar moves a whole call at a time
            progress(event="tokens", count=new_tokens)
        return output

    with torch.no_grad():
        for run_index in range(plan["warmup_runs"]):
            progress(event="phase", name="warm-up (compiles in graph modes)" if run_index == 0 else "warm-up")
            last = generate()
        # The parent says when to measure: all runs at once, or one at a time between other modes' runs.
        progress(event="ready")
        os.environ["LLAMA_GRAPH_PATCH_TIMING"] = ranks_module.rank_path(timing_path, ranks)
        while (command := ranks.next_command()) != "finish":
            progress(event="phase", name="measuring")
            for _ in range(plan["runs"] if command == "measure" else 1):
                sequences.append(generate())
            progress(event="ran")
    if plan["runs"] and not sequences:
        raise RuntimeError("the parent asked for no measured run")
    if sequences:
        last = sequences[-1]
    generated = last[:, plan["input_len"] :]
    own = {
        "tokens": generated.tolist(),
        "call_s": call_s,
        "graphs": compiled_graphs(),
        "peak_memory_mb": peak_memory_mb(device, torch),
        "timing": read_records(ranks_module.rank_path(timing_path, ranks)),
    }
    every_rank = ranks.gather(own)
    ranks.leave()
    if not ranks.first:
        return None
    if ranks.size > 1:
        write_records(timing_path, slowest_steps([rank["timing"] for rank in every_rank]))
    for rank, other in enumerate(every_rank[1:], start=1):
        if other["tokens"] != own["tokens"]:
            raise RuntimeError(f"rank {rank} generated other tokens than rank 0: the ranks' logits differ")
    cache = model.__dict__.get("llama_graph_patch_kv_cache")
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    element = torch.finfo(dtype).bits // 8
    return {
        "device": device_name(device, torch),
        "device_type": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "world_size": ranks.size,
        "new_tokens": [int(sequence.shape[1]) - plan["input_len"] for sequence in sequences],
        "tokens": own["tokens"],
        "answers": None if plan["preset"] else tokenizer.batch_decode(generated, skip_special_tokens=True),
        "warmup_s": max(rank["call_s"][0] for rank in every_rank) if plan["warmup_runs"] else None,
        "call_s": [max(times) for times in zip(*(rank["call_s"] for rank in every_rank))],
        "graphs": own["graphs"],
        "graphs_per_rank": [rank["graphs"] for rank in every_rank],
        "cuda_graphs": cuda_graphs_recorded(device),
        "cache": compile_cache_state(model),
        "precompiled_load_s": precompiled_load_s(model),
        "peak_memory_mb": max(rank["peak_memory_mb"] for rank in every_rank),
        "peak_memory_mb_per_rank": [rank["peak_memory_mb"] for rank in every_rank],
        "model_bytes": local_bytes(model),  # one rank's share: what each card reads per step
        # keys and values of every layer that one rank holds, per token of all rows (batch x beams)
        "kv_bytes_per_token": 2 * config.num_hidden_layers * config.num_key_value_heads // ranks.size * head_dim
        * element * plan["batch_size"] * plan["decoding"]["num_beams"],
        "static_cache_mb": cache.nbytes / 2**20 if cache is not None else None,
        "peak_bandwidth_gbs": peak_bandwidth_gbs(device, torch),
    }


def write_records(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(record) + "\n" for record in records)


def slowest_steps(per_rank: list[list[dict]]) -> list[dict]:
    """One timing record per step, rank 0's with the slowest rank's time: the step is done when all are."""
    if len({len(records) for records in per_rank}) != 1:
        raise RuntimeError(f"the ranks timed different numbers of steps: {[len(records) for records in per_rank]}")
    return [{**steps[0], "ms": max(step["ms"] for step in steps)} for steps in zip(*per_rank)]


def compiled_graphs() -> int:
    """Graphs dynamo compiled in this process (for every model in it: the worker holds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cuda_graphs_recorded(device) -> dict | None:
    """On CUDA: how many CUDA graphs inductor recorded (reduce-overhead and max-autotune capture them) and
    how many compiled graphs it left uncaptured, with the reason logged; None elsewhere."""
    if device.type != "cuda":
        return None
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_trees

    manager = cudagraph_trees.get_manager(device.index or 0, create_if_none_exists=False)
    roots = list(manager.get_roots()) if manager is not None else []
    recorded = sum(1 + root.num_descendants() for root in roots)
    return {"recorded": recorded, "skipped": int(counters["inductor"]["cudagraph_skips"])}


def compile_cache_state(model) -> str | None:
    """What the patched transformers found in the compile cache: "precompiled" (code it called without
    tracing), "warm" (torch's caches), "cold", or None (eager, or no cache)."""
    cache = model.__dict__.get("_llama_graph_patch", {}).get("cache")
    return cache["state"] if cache else None


def precompiled_load_s(model) -> float | None:
    """Seconds the patched transformers spent loading precompiled code, where it found some."""
    cache = model.__dict__.get("_llama_graph_patch", {}).get("cache")
    return cache.get("load_s") if cache and cache["state"] == "precompiled" else None


def resolve_device(asked: str, torch):
    if asked == "npu" or asked == "auto" and npu_available():
        import torch_npu  # noqa: F401  (registers the npu device)

        return torch.device("npu")
    if asked == "cuda" or asked == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def rank_device(device, torch):
    """Under the launcher, the accelerator of this rank's LOCAL_RANK, made current (NCCL and HCCL expect it)."""
    if device.type == "cpu" or "LOCAL_RANK" not in os.environ:
        return device
    accelerator = getattr(torch, device.type)
    index, count = int(os.environ["LOCAL_RANK"]), accelerator.device_count()
    if index >= count:
        raise RuntimeError(f"local rank {index} needs {device.type}:{index}, but this machine shows {count} {device.type} devices")
    accelerator.set_device(index)
    return torch.device(device.type, index)


def npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.npu.is_available()


def resolve_dtype(asked: str, device, torch):
    if asked == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return getattr(torch, asked)


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


def synchronize(device, torch) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize()


def device_name(device, torch) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "npu":
        return torch.npu.get_device_name()
    from patcher.bench.report import host_cpu

    return f"cpu ({host_cpu()})"


def peak_memory_mb(device, torch) -> float:
    """Most device memory torch allocated (cuda, npu), or the process's peak resident size (cpu)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "npu":
        return torch.npu.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_bandwidth_gbs(device, torch) -> float | None:
    """Theoretical memory bandwidth of a CUDA device from its clock and bus width, where torch says."""
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    clock_khz = getattr(properties, "memory_clock_rate", None)
    bus_bits = getattr(properties, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


if __name__ == "__main__":
    main()
