"""Greedy generation with a tiny random Llama, in each asked mode; prints one JSON object.

Run in a child process whose import path starts with the transformers to test (patched or not), so a
test can compare modes and installations. Each mode makes three generate calls: a left-padded batch,
the same batch again, and a batch with shorter prompts and fewer new tokens. For each call it reports
the generated tokens, the number of graphs dynamo has compiled after every step and the shapes of the
model's inputs at every step; for the mode, the step timing records.
"""

import argparse
import json
import logging
import os
import sys
import types

import torch
from tiny import enter_mode, smollm2_135m, timing_records, tiny_llama
from transformers import LogitsProcessor, LogitsProcessorList

try:
    from transformers.generation._llama_graph_patch.state import describe
except ImportError:  # the unpatched transformers the reference tokens come from
    describe = None


def left_padded_batch(lengths, seed=1):
    """Prompts of the given lengths, padded on the left to the longest."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(3, 99, (len(lengths), width), generator=generator)
    attention_mask = torch.ones(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, : width - length] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


def calls(new_tokens, rows=3, prompt_len=9):
    """The three generate calls of every mode: (input_ids, attention_mask, new tokens), of `rows` rows each,
    the first two with prompts of up to `prompt_len` tokens."""
    first = left_padded_batch([prompt_len, prompt_len - 3, prompt_len - 5][:rows])
    third = left_padded_batch([6, 6, 2][:rows], seed=2)
    return [(*first, new_tokens), (*first, new_tokens), (*third, new_tokens - 7)]


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

    def recording(self, *args, **kwargs):
        inputs = prepare(*args, **kwargs)
        step = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                step[name] = list(value.shape)
            elif isinstance(value, tuple) and value and hasattr(value[0], "slots"):
                step[name] = [list(value[0].key.shape), list(value[0].slots.shape)]
        shapes.append(step)
        return inputs

    # A bound method, as generate() checks, named as the attribute that holds it: precompiling pickles the
    # model's attributes, and torch pickles a bound method by looking its name up on the object.
    recording.__name__ = "prepare_inputs_for_generation"
    model.prepare_inputs_for_generation = types.MethodType(recording, model)


def run_mode(mode, args):
    from torch._dynamo.utils import counters

    timing = enter_mode(mode, args.timing_dir)
    if args.model == "smollm2-135m":
        model = smollm2_135m(seed=args.weights_seed).to(args.device)
    else:
        model = tiny_llama(args.kv_heads, seed=args.weights_seed).to(args.device)
    shapes = []
    record_input_shapes(model, shapes)
    results = []
    with torch.no_grad():
        for input_ids, attention_mask, new_tokens in calls(args.new_tokens, args.rows, args.prompt_len):
            steps = CompiledGraphsPerStep(counters, args.forbid_recompiles and os.environ["EXE_MODE"] == "dynamo")
            del shapes[:]
            sequences = model.generate(
                input_ids=input_ids.to(args.device),
                attention_mask=attention_mask.to(args.device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([steps]),
            )
            if steps.forbid:
                torch.compiler.set_stance("default")
            results.append(
                {
                    "tokens": sequences[:, input_ids.shape[1] :].tolist(),
                    "graphs_per_step": steps.graphs,
                    "input_shapes": shapes[:new_tokens],
                }
            )
    seen = describe(model) if describe else {}
    return {
        "calls": results,
        "static_cache": seen.get("static_kv_cache_mb") is not None,
        "compile_cache": seen.get("compile_cache") and {
            "state": seen["compile_cache"], "path": seen["compile_cache_file"], "load_s": seen["precompiled_load_s"]
        },
        "frozen": seen.get("frozen"),
        "layers_after": sorted({type(layer).__name__ for layer in model.model.layers}),
        "cuda_graphs": seen.get("cuda_graphs"),
        "timing": timing_records(timing),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["tiny", "smollm2-135m"], default="tiny",
                        help="the tiny Llama, or SmolLM2-135M's public config with 2 layers (both random weights)")
    parser.add_argument("--kv-heads", type=int, default=2, help="the tiny Llama's key-value heads")
    parser.add_argument("--prompt-len", type=int, default=9, help="the longest prompt of the first two calls")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--modes", default="eager,max-autotune,reduce-overhead")
    parser.add_argument("--weights-seed", type=int, default=0, help="the random weights of a same-shape checkpoint")
    parser.add_argument("--rows", type=int, choices=[1, 2, 3], default=3, help="rows of every batch")
    parser.add_argument("--timing-dir")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument(
        "--forbid-recompiles", action="store_true", help="fail_on_recompile from the first decode step on"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    results = {mode: run_mode(mode, args) for mode in args.modes.split(",")}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
