"""A tiny grouped-query Llama (4 heads, 2 key-value heads) sharded over the ranks of `torchrun` with torch's TP
API, generating greedily in the modes given, two calls per mode; prints one JSON line per rank: tokens and
graphs compiled per call. Without torchrun (`--reference`) it generates in one process, unsharded, as the
reference to compare with. Run it with the transformers to test first on PYTHONPATH:

    PYTHONPATH=PATCHED_SITE torchrun --standalone --nproc-per-node 2 benchmarks/tensor_parallel_check.py eager,max-autotune,reduce-overhead
    PYTHONPATH=UNPATCHED_SITE python benchmarks/tensor_parallel_check.py --reference

(LLAMA_GRAPH_PATCH_STATIC_CACHE=0|1 picks the KV cache where the static-cache patch is applied.)
"""

import argparse
import json
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PLAN_COLUMNS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
PLAN_ROWS = ("self_attn.o_proj", "mlp.down_proj")


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a wider spread than the initializer's: decisive greedy choices
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.1)
    return model


def shard(model, mesh):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {name: ColwiseParallel() for name in PLAN_COLUMNS}
    plan.update({name: RowwiseParallel() for name in PLAN_ROWS})
    for layer in model.model.layers:
        parallelize_module(layer, mesh, plan)
        attention = layer.self_attn
        attention.num_heads //= mesh.size()
        attention.num_key_value_heads //= mesh.size()
        attention.hidden_size //= mesh.size()
    return model


def generate_twice(model):
    from torch._dynamo.utils import counters

    calls = []
    for rows, length in ((3, 9), (3, 5)):
        input_ids = torch.randint(3, 99, (rows, length), generator=torch.Generator().manual_seed(length))
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
    args = parser.parse_args()
    if args.reference:
        print(json.dumps({"reference": generate_twice(tiny_llama())}))
        return
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    results = {}
    for mode in args.modes.split(","):
        os.environ["EXE_MODE"] = "eager" if mode == "eager" else "dynamo"
        os.environ["GRAPH_MODE"] = "max-autotune" if mode == "eager" else mode
        torch._dynamo.reset()
        counters.clear()
        results[mode] = generate_twice(shard(tiny_llama(), mesh))
    print(json.dumps({"rank": dist.get_rank(), "world_size": dist.get_world_size(), **results}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
