"""Every decoding strategy of generate() with a tiny random Llama, in each asked mode; prints one JSON object.

Run in a child process whose import path starts with the transformers to test (patched or not). Per mode,
one model makes two calls per strategy (greedy, sampling, the four beam searches, contrastive search,
assisted decoding) on a left-padded batch, with torch.manual_seed set before each call. For each call it
reports the tokens and the graphs dynamo compiled during it; for the mode, the step timing records.
"""

import argparse
import json
import logging
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(kv_heads, seed=0, layers=2):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # spread the logits, so that close calls between tokens are rare
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.1)
    return model


def left_padded_batch(rows):
    """Prompts of 9, 6 and 4 tokens (or the first `rows` of them), padded on the left to 9."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 99, (3, 9), generator=generator)[:rows]
    attention_mask = torch.ones(3, 9, dtype=torch.long)[:rows]
    attention_mask[1:, :3] = 0
    attention_mask[2:, :5] = 0
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask


def strategies(kv_heads):
    """(name, generate() options, rows) per decoding strategy."""
    return [
        ("greedy_search", {}, 3),
        ("sample", {"do_sample": True, "top_k": 20, "top_p": 0.95, "temperature": 0.9}, 3),
        ("beam_search", {"num_beams": 3}, 3),
        ("beam_sample", {"num_beams": 3, "do_sample": True, "top_k": 20}, 3),
        ("group_beam_search", {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5}, 3),
        ("constrained_beam_search", {"num_beams": 3, "force_words_ids": [[17, 18]]}, 3),
        ("contrastive_search", {"penalty_alpha": 0.6, "top_k": 4}, 3),
        ("assisted_decoding", {"assistant_model": tiny_llama(kv_heads, seed=1, layers=1)}, 1),  # batch 1 only
    ]


def run_mode(mode, args):
    from torch._dynamo.utils import counters

    os.environ["EXE_MODE"] = "eager" if mode in ("eager", "reference") else "dynamo"
    os.environ["GRAPH_MODE"] = mode if mode in ("max-autotune", "reduce-overhead") else "max-autotune"
    timing = os.path.join(args.timing_dir, mode + ".jsonl") if args.timing_dir else None
    if timing:
        os.environ["LLAMA_GRAPH_PATCH_TIMING"] = timing
    torch._dynamo.reset()
    counters.clear()
    model = tiny_llama(args.kv_heads)
    calls = []
    with torch.no_grad():
        for name, options, rows in strategies(args.kv_heads):
            input_ids, attention_mask = left_padded_batch(rows)
            for call in range(2):
                before = counters["stats"]["unique_graphs"]
                torch.manual_seed(1234 + call)
                sequences = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    **options,
                )
                calls.append({
                    "strategy": name,
                    "call": call,
                    "tokens": sequences[:, input_ids.shape[1]:].tolist(),
                    "new_graphs": counters["stats"]["unique_graphs"] - before,
                })
    records = []
    if timing and os.path.exists(timing):
        with open(timing) as source:
            records = [json.loads(line) for line in source]
    return {"calls": calls, "timing": records}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kv-heads", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, default=10)
    parser.add_argument("--modes", default="eager,max-autotune,reduce-overhead")
    parser.add_argument("--timing-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps({mode: run_mode(mode, args) for mode in args.modes.split(",")}))


if __name__ == "__main__":
    main()
