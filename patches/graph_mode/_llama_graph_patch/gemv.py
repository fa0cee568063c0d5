"""One-row decode on a CPU: each linear layer of a step that feeds one token of one row is a matrix-vector
product, bound by reading the weight once. inductor hands it to MKL's or oneDNN's matrix product, which on
this project's 2-core CPU read a SmolLM2- or TinyLlama-width weight at 11 to 25 GB/s of the 33-38 the machine
streams; written as a multiply and a sum over each weight row, inductor's own vectorized reduction reads it
at 21 to 32 GB/s and fuses the step into a few kernels (benchmarks/one_row_matmul.py and its record).

The pass rewrites, before inductor lowers the graph, each `mm`/`addmm` whose left operand has exactly one
row in every call of that graph (batch size 1, one token: dynamo specialises size 1), fp32, on a CPU.
Prefill and batches of two rows or more keep their matrix products (frozen weights serve those).
"""

import contextlib
import functools

import torch

aten = torch.ops.aten


def one_row_matmuls():
    """While tracing: the pass joins inductor's graph passes, after any of the user's own."""
    from torch._inductor import config, custom_graph_pass

    current = config.joint_custom_pre_pass
    if current is None:
        return config.patch(joint_custom_pre_pass=one_row_pass())
    if hasattr(custom_graph_pass, "get_custom_graph_passes"):  # torch that takes a list of passes
        passes = list(current) if isinstance(current, (list, tuple)) else [current]
        return config.patch(joint_custom_pre_pass=passes + [one_row_pass()])
    return contextlib.nullcontext()  # one pass only, and it is the user's


def one_row(node):
    """The operands (bias or None, row, weight transposed) of a one-row fp32 CPU matrix product, else None."""
    if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
        return None
    bias, row, weight = (None, *node.args) if node.target is aten.mm.default else node.args[:3]
    row_value, weight_value = row.meta.get("val"), weight.meta.get("val")
    if row_value is None or weight_value is None or row_value.device.type != "cpu":
        return None
    if row_value.dtype != torch.float32 or weight_value.dtype != torch.float32:
        return None
    if not all(isinstance(size, int) for size in row_value.shape) or row_value.shape[0] != 1:
        return None  # a symbolic size may be more than one row
    return bias, row, weight


def rewrite(graph):
    """x (1, k) @ wT (k, n)  ->  sum(x * w, dim=1) as (1, n): every row of w read once, contiguously."""
    for node in list(graph.nodes):
        operands = one_row(node)
        if operands is None:
            continue
        bias, row, weight = operands

        def call(target, *args):
            new = graph.call_function(target, args)
            with row.meta["val"].fake_mode:  # what later passes read of every node
                new.meta["val"] = target(*[arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg for arg in args])
            return new

        with graph.inserting_before(node):
            rows = call(aten.permute.default, weight, [1, 0])  # the weight as stored, (n, k)
            out = call(aten.sum.dim_IntList, call(aten.mul.Tensor, row, rows), [1], True)
            out = call(aten.permute.default, out, [1, 0])
            if bias is not None:
                out = call(aten.add.Tensor, out, bias)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    graph.lint()


@functools.lru_cache(maxsize=None)
def one_row_pass():
    """The pass as inductor takes it, made once (its base class is imported when something compiles)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class OneRowMatmuls(CustomGraphPass):
        def __call__(self, graph):
            rewrite(graph)

        def uuid(self):  # inductor's caches key compiled code on it
            return get_hash_for_files((__file__,))

    return OneRowMatmuls()
