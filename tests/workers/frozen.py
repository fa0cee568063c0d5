"""Frozen weights in a patched transformers: what inductor packed, the tokens, and what a change of the weights
does. Prints one JSON object. Run with the patched site-packages first on the import path."""

import copy
import json
import logging
import os
import re
import sys
from unittest import mock

import torch
from tiny import tiny_llama
from torch._dynamo.utils import counters
from torch._inductor.graph import GraphLowering
from transformers.generation._llama_graph_patch.state import describe


def generate(model, rows, mode):
    """Greedy tokens of one generate call of `rows` rows, inductor's linear weights packed during it, and the
    calls of its C++ GEMM template's kernels in the code compiled during it."""
    os.environ["EXE_MODE"] = mode
    ids = torch.randint(3, 99, (rows, 7), generator=torch.Generator().manual_seed(rows))
    before = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"]
    codes = []  # what inductor writes out, from its cache too (torch's run_and_get_code would reset dynamo first)
    with torch.no_grad(), mock.patch.object(GraphLowering, "save_output_code", codes.append):
        out = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    packed = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"] - before
    return out[:, 7:].tolist(), packed, sum(template_calls(code) for code in codes)


def template_calls(code):
    """Calls of C++ GEMM template kernels in inductor's code for one graph (layers alike share a kernel)."""
    pieces = re.split(r"^(\w+) = async_compile\.cpp_pybinding\(", code, flags=re.M)
    templates = [name for name, source in zip(pieces[1::2], pieces[2::2]) if "micro_gemm" in source]
    return sum(len(re.findall(r"^\s+%s\(" % name, code, flags=re.M)) for name in templates)


def compare(model, rows):
    """Tokens compiled and eager (eager last: the compiled call runs first, on the weights as they are)."""
    compiled, packed, templates = generate(model, rows, "dynamo")
    frozen = describe(model)["frozen"]
    eager, _, _ = generate(model, rows, "eager")
    return {"same": compiled == eager, "packed": packed, "templates": templates, "frozen": frozen}


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    os.environ["LLAMA_GRAPH_PATCH_FREEZE"] = "1"  # the tiny Llama is narrower than `auto` freezes
    model = tiny_llama(2, spread=0.1)
    report = {"first": compare(model, 2), "again": compare(model, 2), "one row": compare(model, 1)}
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a fine-tune step: in place, through autograd's version counter
        for weight in model.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.05)
    report["in place"] = compare(model, 2)
    with torch.no_grad():  # an adapter merged through .data, which the version counter does not see
        model.model.layers[0].mlp.down_proj.weight.data.copy_(torch.randn(32, 64, generator=generator) * 0.3)
    report["through data"] = compare(model, 2)
    model.model.layers[1].self_attn.o_proj = copy.deepcopy(model.model.layers[0].self_attn.o_proj)  # a swapped module
    report["swapped"] = compare(model, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
