"""Every decoding strategy of generate() with a tiny random Llama, in each asked mode; prints one JSON object.

Run in a child process whose import path starts with the transformers to test (patched or not). Per mode,
one model makes two calls per strategy (greedy, sampling, the four beam searches, contrastive search,
assisted decoding) on a left-padded batch, with torch.manual_seed set before each call. For each call it
reports the tokens and the graphs dynamo compiled during it; for the mode, the step timing records.
"""

import argparse
import json
import logging
import sys

import torch
from tiny import enter_mode, timing_records, tiny_llama


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
        ("assisted_decoding", {"assistant_model": tiny_llama(kv_heads, seed=1, layers=1, spread=0.1)}, 1),  # batch 1
    ]


def run_mode(mode, args):
    from torch._dynamo.utils import counters

    timing = enter_mode(mode, args.timing_dir)
    model = tiny_llama(args.kv_heads, spread=0.1)  # logits far apart: no near-ties for sampling and beams
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
    return {"calls": calls, "timing": timing_records(timing)}


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
