"""The worker scripts' tiny grouped-query Llama (4 heads, 2 key-value heads) sharded over the ranks of
`torchrun` with torch's TP API as a user's script would (the plan of patcher/bench/sharding.py, which this
script may not import: tests run it where the tool cannot be imported), generating greedily in the modes
given, two calls per mode; each rank writes OUT/rank<R>.json (--output OUT; the ranks share one stdout, where
long lines of two ranks can interleave): tokens and graphs compiled per call. With
--reference it generates in one process, unsharded, as the reference to compare with. The transformers to
test goes first on the import path:

    PYTHONPATH=PATCHED_SITE torchrun --standalone --nproc-per-node 2 tests/workers/tensor_parallel.py --output OUT
    PYTHONPATH=UNPATCHED_SITE python tests/workers/tensor_parallel.py --reference

A mode is eager, max-autotune or reduce-overhead; with +static (where the static-cache patch is applied)
it runs with LLAMA_GRAPH_PATCH_STATIC_CACHE=1, else 0.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from tiny import enter_mode, tiny_llama

COLUMNWISE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
ROWWISE = ("self_attn.o_proj", "mlp.down_proj")


def shard(model, mesh):
    """The Llama plan: each rank keeps its share of the heads and of the MLP, o_proj and down_proj all-reduce."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {name: ColwiseParallel() for name in COLUMNWISE}
    plan.update({name: RowwiseParallel() for name in ROWWISE})
    for layer in model.model.layers:
        parallelize_module(layer, mesh, plan)
        attention = layer.self_attn
        attention.num_heads //= mesh.size()
        attention.num_key_value_heads //= mesh.size()
        attention.hidden_size //= mesh.size()
    return model


def generate_twice(model):
    """Two calls of 3 rows and 8 new tokens: prompts of 9 tokens, then of 5 (no new graph expected)."""
    from torch._dynamo.utils import counters

    calls = []
    for length in (9, 5):
        input_ids = torch.randint(3, 99, (3, length), generator=torch.Generator().manual_seed(length))
        started = time.perf_counter()
        with torch.no_grad():
            sequences = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=8,
                                       min_new_tokens=8, do_sample=False)
        calls.append({"tokens": sequences[:, length:].tolist(), "graphs": int(counters["stats"]["unique_graphs"]),
                      "s": round(time.perf_counter() - started, 2)})
    return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="?", default="eager,max-autotune,reduce-overhead")
    parser.add_argument("--reference", action="store_true", help="one process, unsharded")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (2)")
    parser.add_argument("--output", type=Path, help="the folder each rank writes its rank<R>.json into")
    args = parser.parse_args()
    if args.reference:
        print(json.dumps({"reference": generate_twice(tiny_llama(2, layers=args.layers, spread=0.1))}))
        return
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    results = {}
    for mode in args.modes.split(","):
        name, static, _ = mode.partition("+static")
        os.environ["LLAMA_GRAPH_PATCH_STATIC_CACHE"] = "1" if static else "0"
        enter_mode(name)
        results[mode] = generate_twice(shard(tiny_llama(2, layers=args.layers, spread=0.1), mesh))
    report = {"rank": dist.get_rank(), "world_size": dist.get_world_size(), **results}
    (args.output / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
