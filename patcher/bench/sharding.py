"""Tensor parallelism for the bench: which model shapes N ranks can split, and the Llama plan that splits them.

The plan is the one users apply in their own scripts with torch's TP API (docs/serving.md): q, k, v, gate and up
projections split by output columns, o and down by input rows (their outputs all-reduced), so that each
rank keeps its share of the attention heads and of the MLP. Embeddings, norms and the LM head stay whole
on every rank, so every rank computes the same logits and picks the same tokens.
"""

from __future__ import annotations

from patcher.errors import UsageError

COLUMNWISE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
ROWWISE = ("self_attn.o_proj", "mlp.down_proj")

# torch.distributed's backend for the device type: Gloo on CPUs, NCCL on CUDA, HCCL (torch_npu's) on Ascend.
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def check_divisible(config: dict, ranks: int, source: str) -> None:
    """Refuse a rank count that does not split the heads, the key-value heads and the MLP evenly."""
    sizes = {
        "num_attention_heads": config["num_attention_heads"],
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "intermediate_size": config["intermediate_size"],
    }
    uneven = [f"{name} {size}" for name, size in sizes.items() if size % ranks]
    if uneven:
        fits = [n for n in range(1, sizes["num_key_value_heads"] + 1) if all(size % n == 0 for size in sizes.values())]
        raise UsageError(
            f"--nproc-per-node {ranks} does not divide {', '.join(uneven)} of {source}: each rank must hold an "
            f"equal share of the heads; use one of {', '.join(map(str, fits))}"
        )


def shard(model, mesh):
    """Split every decoder layer of a transformers LlamaForCausalLM over `mesh` (a 1-d DeviceMesh), in place.

    The attention modules' head counts become the per-rank counts, since transformers reshapes q, k and v
    by them."""
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


def weight_bytes_read(model) -> int:
    """Bytes of the weights a decode step reads on this rank (its shards of split weights, all of the others):
    every weight it multiplies with, but of the input embedding table only the rows of the tokens fed (left to
    the caller); a table tied to the output head is read whole by the head, and counted once."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    total = 0
    for parameter in model.parameters():  # each shared tensor once
        if parameter is embedding and not tied:
            continue
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter  # a DTensor's own shard
        total += local.numel() * local.element_size()
    return total
