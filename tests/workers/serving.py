"""A long-lived process serving varied generate calls with one tiny random Llama; prints one JSON object.

Run in a child process whose import path starts with the transformers to test (patched or not). The calls
follow what an application mixes: batch sizes 1 to 4, left padding, other numbers of new tokens, a
text-generation pipeline (which generates under inference_mode), inference_mode itself, a TextStreamer,
output_scores. For every call it reports the generated tokens (or texts), the graphs dynamo has compiled
so far, and the static KV cache the model holds; at the end, how many caches it ever allocated are alive.
"""

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import sys
import weakref

import torch
from tiny import tiny_llama
from transformers import AutoTokenizer, TextStreamer, pipeline


def static_kv_cache_shapes(seen):
    """The shapes of the static KV caches alive now (none where the static-cache patch is not applied);
    `seen` gains a weak reference to each one it did not hold yet."""
    try:
        from transformers.models.llama._llama_graph_patch_kv_cache import StaticKVCache
    except ImportError:
        return []
    gc.collect()
    alive = [value for value in gc.get_objects() if isinstance(value, StaticKVCache)]
    seen += [weakref.ref(cache) for cache in alive if not any(ref() is cache for ref in seen)]
    return [list(cache.shape) for cache in alive]


def batch(rows, width, seed):
    """`rows` prompts left-padded to `width`, the second one shorter by three tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 99, (rows, width), generator=generator)
    attention_mask = torch.ones(rows, width, dtype=torch.long)
    if rows > 1:
        attention_mask[1, :3] = 0
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 2), "attention_mask": attention_mask}


def serving_calls(model, tokenizer):
    """(name, function returning token lists or texts) in the order an application might send them."""

    def generate(inputs, **options):
        options.setdefault("max_new_tokens", 6)
        output = model.generate(**inputs, min_new_tokens=options["max_new_tokens"], do_sample=False, **options)
        sequences = output.sequences if hasattr(output, "sequences") else output
        return sequences[:, inputs["input_ids"].shape[1] :].tolist()

    def pipeline_call():
        generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
        prompts = ["What is graph mode?", "Why is the sky blue?", "How many tokens per second does it reach?"]
        outputs = generator(prompts, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        return [output[0]["generated_text"] for output in outputs]

    def under_inference_mode():
        with torch.inference_mode():
            return generate(batch(3, 9, 4))

    def with_streamer():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            tokens = generate(batch(1, 7, 5), streamer=TextStreamer(tokenizer))
        return [tokens, printed.getvalue()]

    def with_scores():
        inputs = batch(3, 8, 6)
        output = model.generate(
            **inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, output_scores=True,
            return_dict_in_generate=True,
        )
        return [output.sequences[:, 8:].tolist(), len(output.scores)]

    return [
        ("batch 1", lambda: generate(batch(1, 7, 1))),
        ("batch 3, left-padded", lambda: generate(batch(3, 9, 2))),
        ("batch 2, 12 new tokens", lambda: generate(batch(2, 9, 3), max_new_tokens=12)),
        ("pipeline, 3 prompts", pipeline_call),
        ("inference_mode, batch 3", under_inference_mode),
        ("TextStreamer, batch 1", with_streamer),
        ("output_scores, batch 3", with_scores),
        ("batch 4", lambda: generate(batch(4, 10, 7))),
        ("batch 1 again", lambda: generate(batch(1, 7, 1))),
    ]


def varied_calls(model):
    """20 generate calls of changing batch sizes and lengths, for the static cache's bookkeeping."""
    shapes = [(3, 9, 6), (3, 7, 4), (2, 9, 6), (2, 12, 8), (3, 5, 3), (1, 9, 4), (4, 6, 5), (4, 6, 9), (2, 4, 2),
              (3, 9, 6)] * 2
    return [
        ("varied %d: batch %d, prompt %d, %d new" % (index, rows, width, new),
         lambda rows=rows, width=width, new=new, index=index: model.generate(
             **batch(rows, width, 10 + index), max_new_tokens=new, min_new_tokens=new, do_sample=False
         )[:, width:].tolist())
        for index, (rows, width, new) in enumerate(shapes)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kv-heads", type=int, required=True)
    parser.add_argument("--tokenizer", required=True, help="a slow Llama tokenizer folder")
    parser.add_argument("--sequence", choices=["serving", "varied"], default="serving")
    parser.add_argument("--recompile-limit", type=int, help="torch._dynamo.config.recompile_limit for this run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from torch._dynamo.utils import counters

    if args.recompile_limit:
        torch._dynamo.config.recompile_limit = args.recompile_limit
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, use_fast=False, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_llama(args.kv_heads, vocab_size=len(tokenizer), pad_token_id=2)
    calls = serving_calls(model, tokenizer) if args.sequence == "serving" else varied_calls(model)
    caches = []  # a weak reference to every static KV cache the process ever held
    report = []
    with torch.no_grad():
        for name, call in calls:
            result = call()
            shapes = static_kv_cache_shapes(caches)
            report.append({
                "call": name,
                "result": result,
                "graphs": counters["stats"]["unique_graphs"],
                "static_cache": (shapes[0] if len(shapes) == 1 else shapes) or None,  # more than one: a leak
            })
    alive = len(static_kv_cache_shapes([]))
    print(json.dumps({"calls": report, "caches_allocated": len(caches), "caches_alive": alive,
                      "mode": [os.environ.get("EXE_MODE"), os.environ.get("GRAPH_MODE")]}))


if __name__ == "__main__":
    main()
