"""The peer: transformers' own static KV cache and torch.compile, on a Llama of a given config (random weights).

Runs in an environment of its own with the current transformers release (benchmarks/peer.py makes it and
starts this), not the patched 4.31.0: generation_config.cache_implementation = "static" and a compile_config,
with which generate() compiles the decode step itself (on a CPU only with CompileConfig's
_compile_all_devices). Prefill runs eager there. Each decode step is timed from one token to the next by a
streamer; generate() hands it each token once the step's logits are on the host. Prints one JSON object.
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer


class StepClock(BaseStreamer):
    """The time of every token generate() puts: the prompt first, then one per step."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the LlamaConfig's fields, as JSON")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--input-len", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--runs", type=int, default=3, help="measured generate calls, after one that compiles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(**json.loads(args.config))).eval()
    settings = model.generation_config
    settings.cache_implementation = "static"
    settings.compile_config = CompileConfig()  # transformers' defaults
    settings.compile_config._compile_all_devices = True  # else generate() compiles on accelerators only
    settings.eos_token_id = None  # random weights: every call makes all its tokens
    settings.pad_token_id = 0
    ids = torch.randint(3, 1000, (args.batch_size, args.input_len), generator=torch.Generator().manual_seed(args.seed))
    options = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=False)

    started = time.perf_counter()
    model.generate(ids, **options)
    first_call_s = time.perf_counter() - started
    decode_ms, prefill_ms = [], []
    for _ in range(args.runs):
        clock = StepClock()
        started = time.perf_counter()
        model.generate(ids, streamer=clock, **options)
        prefill_ms.append(1000 * (clock.times[1] - started))
        decode_ms += [1000 * (later - earlier) for earlier, later in zip(clock.times[1:], clock.times[2:])]
    print(json.dumps({
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "compile_config": {key: value for key, value in vars(settings.compile_config).items() if not key.startswith("_")},
        "first_call_s": first_call_s,
        "prefill_ms": statistics.median(prefill_ms),
        "decode_ms_median": statistics.median(decode_ms),
        "decode_ms_mean": statistics.fmean(decode_ms),
        "decode_steps": len(decode_ms),
    }))


if __name__ == "__main__":
    main()
