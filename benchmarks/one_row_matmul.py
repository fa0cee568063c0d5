"""How fast a CPU reads a weight for one row: the matrix-vector product of a batch-1 decode step, three ways.

    .venv/bin/python benchmarks/one_row_matmul.py > benchmarks/DATE-cpu-one-row-matmul.md

- `linear`: torch.nn.functional.linear, what eager and inductor's matrix products call (MKL or oneDNN);
- `packed`: MKL's linear on a weight packed ahead, what inductor's frozen weights call on a CPU;
- `mul-sum`: the product written as a multiply and a sum over each weight row, compiled by inductor: what
  the runtime's one-row pass (patches/graph_mode/_llama_graph_patch/gemv.py) makes of it.

The shapes are SmolLM2-135M's and TinyLlama-1.1B's linear layers, fp32. Each call reads another copy of
the weight, enough copies to exceed 256 MB, so that the weight comes from memory, not from the cache.
"""

import statistics
import time

import torch

SHAPES = {  # (in, out) features
    "SmolLM2-135M q/o": (576, 576),
    "SmolLM2-135M gate/up": (576, 1536),
    "SmolLM2-135M down": (1536, 576),
    "SmolLM2-135M head": (576, 49152),
    "TinyLlama-1.1B gate/up": (2048, 5632),
    "TinyLlama-1.1B down": (5632, 2048),
}
CALLS = 200


@torch.compile(dynamic=False, fullgraph=True)
def mul_sum(row, weight):
    return (row * weight).sum(dim=1)


def gbs(call, copies, nbytes):
    """The best of 3 rounds of CALLS calls, each on the next copy of the weight, as GB/s of weight read."""
    for index in range(10):
        call(copies[index % len(copies)])
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for index in range(CALLS):
            call(copies[index % len(copies)])
        rounds.append((time.perf_counter() - started) / CALLS)
    return nbytes / min(rounds) / 1e9


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, GB/s of weight read (best of 3 x {CALLS})")
    print()
    print("| layer | in x out | MB | linear | packed | mul-sum |")
    print("|---|---|---|---|---|---|")
    results = {}
    with torch.no_grad():
        for name, (inputs, outputs) in SHAPES.items():
            nbytes = inputs * outputs * 4
            weights = [torch.randn(outputs, inputs) for _ in range(max(2, 256 * 2**20 // nbytes))]
            row = torch.randn(1, inputs)
            packed = [(torch.ops.mkl._mkl_reorder_linear_weight(weight, 1), weight) for weight in weights]
            expected = torch.nn.functional.linear(row, weights[0])[0]
            torch.testing.assert_close(mul_sum(row, weights[0]), expected, rtol=1e-4, atol=1e-4)  # another summing order
            results[name] = {
                "linear": gbs(lambda weight: torch.nn.functional.linear(row, weight), weights, nbytes),
                "packed": gbs(lambda pair: torch.ops.mkl._mkl_linear(row, pair[0], pair[1], None, 1), packed, nbytes),
                "mul-sum": gbs(lambda weight: mul_sum(row, weight), weights, nbytes),
            }
            figures = " | ".join(f"{value:.1f}" for value in results[name].values())
            print(f"| {name} | {inputs} x {outputs} | {nbytes / 1e6:.1f} | {figures} |", flush=True)
    print()
    for way in ("linear", "packed", "mul-sum"):
        print(f"- {way}: median {statistics.median(r[way] for r in results.values()):.1f} GB/s")


if __name__ == "__main__":
    main()
