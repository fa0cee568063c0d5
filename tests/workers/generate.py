"""Greedy generation with a tiny random Llama, in each asked mode; prints one JSON object.

Run in a child process whose import path starts with the transformers to test (patched or not), so a
test can compare modes and installations. For each mode it reports the generated tokens, the number of
graphs dynamo compiled after every step and after a second generate call, the shapes of the model's
inputs at every step, the log lines of the patch, and the step timing records.
"""

import argparse
import json
import logging
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList


def tiny_llama(kv_heads):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def left_padded_batch():
    """Three prompts of 9, 6 and 4 tokens, padded on the left to 9."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 99, (3, 9), generator=generator)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, :3] = 0
    attention_mask[2, :5] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


class CompiledGraphsPerStep(LogitsProcessor):
    """Called once per step after the forward pass: records how many graphs dynamo has compiled, and
    from the first decode step on forbids recompiling where torch has set_stance."""

    def __init__(self, counters, forbid_after_first_decode):
        self.counters = counters
        self.forbid = forbid_after_first_decode and hasattr(torch.compiler, "set_stance")
        self.graphs = []

    def __call__(self, input_ids, scores):
        self.graphs.append(self.counters["stats"]["unique_graphs"])
        if self.forbid and len(self.graphs) == 2:
            torch.compiler.set_stance("fail_on_recompile")
        return scores


def record_input_shapes(model, shapes):
    """Wrap the model's prepare_inputs_for_generation to keep the shapes of what each step feeds it."""
    prepare = model.prepare_inputs_for_generation

    def recording(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        step = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                step[name] = list(value.shape)
            elif isinstance(value, tuple) and value and hasattr(value[0], "slots"):
                step[name] = [list(value[0].key.shape), list(value[0].slots.shape)]
        shapes.append(step)
        return inputs

    model.prepare_inputs_for_generation = recording


def run_mode(mode, args, input_ids, attention_mask):
    input_ids, attention_mask = input_ids.to(args.device), attention_mask.to(args.device)
    from torch._dynamo.utils import counters

    os.environ["EXE_MODE"] = "eager" if mode in ("eager", "reference") else "dynamo"
    os.environ["GRAPH_MODE"] = mode if mode in ("max-autotune", "reduce-overhead") else "max-autotune"
    timing = os.path.join(args.timing_dir, mode + ".jsonl") if args.timing_dir else None
    if timing:
        os.environ["LLAMA_GRAPH_PATCH_TIMING"] = timing
    torch._dynamo.reset()
    counters.clear()
    model = tiny_llama(args.kv_heads).to(args.device)
    shapes = []
    record_input_shapes(model, shapes)
    outputs = []
    graphs = []
    with torch.no_grad():
        for call in range(2):
            steps = CompiledGraphsPerStep(counters, args.forbid_recompiles and os.environ["EXE_MODE"] == "dynamo")
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([steps]),
            )
            if steps.forbid:
                torch.compiler.set_stance("default")
            outputs.append(sequences[:, input_ids.shape[1] :].tolist())
            graphs.append(steps.graphs)
    records = []
    if timing and os.path.exists(timing):
        with open(timing) as source:
            records = [json.loads(line) for line in source]
    return {
        "tokens": outputs[0],
        "second_call_tokens": outputs[1],
        "graphs_per_step": graphs[0],
        "graphs_per_step_second_call": graphs[1],
        "input_shapes": shapes[: args.new_tokens],
        "static_cache": "llama_graph_patch_kv_cache" in model.__dict__,
        "timing": records,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kv-heads", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--modes", default="eager,max-autotune,reduce-overhead")
    parser.add_argument("--timing-dir")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument(
        "--forbid-recompiles", action="store_true", help="fail_on_recompile from the first decode step on"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    input_ids, attention_mask = left_padded_batch()
    results = {mode: run_mode(mode, args, input_ids, attention_mask) for mode in args.modes.split(",")}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
