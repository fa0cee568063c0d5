"""Drive the NPU code paths of a patched transformers against the stand-in torchair / torch_npu.

Run with the stand-ins and the patched site-packages first on the import path. Prints one JSON object
of what the stand-ins and torch.compile were asked. No NPU is involved: the model stays on the CPU and
only the device type the patch dispatches on says "npu".
"""

import importlib.util
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch_npu  # the stand-in: installs torch.npu
import torchair  # the stand-in
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation import _llama_graph_patch as runtime
from transformers.generation._llama_graph_patch.timing import StepTimer


class OnNpu:
    """What the patch reads of input_ids / a cache tensor to choose the device path."""

    def __init__(self, data_on_cpu):
        self.data_on_cpu = data_on_cpu
        self.device = SimpleNamespace(type="npu")
        self.shape = data_on_cpu.shape


def compile_on_npu(graph_mode, torch_version, scope="model"):
    """Run the patch's compile step for an NPU model and what torch.compile and torchair received."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ).eval()
    asked = []
    backends = []
    real_compile = torch.compile

    compiled_modules = []

    def recording_compile(module, **options):
        compiled_modules.append(module)
        asked.append({key: value for key, value in options.items() if key != "backend"})
        backends.append(options["backend"])
        return real_compile(module, **options)

    os.environ.update(
        EXE_MODE="dynamo", GRAPH_MODE=graph_mode, LLAMA_GRAPH_PATCH_COMPILE_SCOPE=scope, LLAMA_GRAPH_PATCH_PRECOMPILE="off"
    )
    captured_before = len(torchair.captured_graphs)
    torch.compile, real_version, torch.__version__ = recording_compile, torch.__version__, torch_version
    try:
        compiled = runtime.compile_for_generation(model, OnNpu(torch.zeros(1, 4)))
    finally:
        torch.compile, torch.__version__ = real_compile, real_version
    config = torchair.received_configs[-1]
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        same = torch.equal(compiled(input_ids=ids).logits, model(input_ids=ids).logits)
    return {
        "compiled": [type(module).__name__ for module in compiled_modules],
        "one_backend_for_all": len({id(backend) for backend in backends}) == 1,
        "compile_options": asked,
        "mode": config.mode,
        "frozen_parameter": config.experimental_config.frozen_parameter,
        "disable_reinplace_inplaceable_ops_pass": config.debug.aclgraph.disable_reinplace_inplaceable_ops_pass,
        "graphs_captured_by_backend": len(torchair.captured_graphs) - captured_before,
        "same_logits_as_eager": same,
    }


def cache_compile_on_npu(graph_mode):
    """The precompiled path on an NPU: a prefill and a decode call through torchair's cache_compile."""
    import tempfile

    import torchair.inference

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ).eval()
    root = tempfile.mkdtemp()
    os.environ.update(
        EXE_MODE="dynamo", GRAPH_MODE=graph_mode, LLAMA_GRAPH_PATCH_COMPILE_SCOPE="model",
        LLAMA_GRAPH_PATCH_PRECOMPILE="load", LLAMA_GRAPH_PATCH_CACHE=root,
    )
    compiled = runtime.compile_for_generation(model, OnNpu(torch.zeros(2, 4)))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        prefill, expected = compiled(input_ids=ids), model(input_ids=ids)
        step = torch.tensor([[13], [14]])
        decode = compiled(input_ids=step, past_key_values=prefill.past_key_values)
        expected_decode = model(input_ids=step, past_key_values=expected.past_key_values)
    return {
        "calls": [
            {
                "method": call["func"].__name__,
                "of_a_module": isinstance(call["func"].__self__, torch.nn.Module),
                "mode": call["config"].mode,
                "frozen_parameter": call["config"].experimental_config.frozen_parameter,
                "dynamic": call["dynamic"],
                "cache_dir": os.path.relpath(call["cache_dir"], root).split(os.sep),
                "cache_dir_exists": os.path.isdir(call["cache_dir"]),
            }
            for call in torchair.inference.cache_compile_calls
        ],
        "same_logits_as_eager": torch.allclose(prefill.logits, expected.logits)
        and torch.allclose(decode.logits, expected_decode.logits),
    }


def synchronize_calls(device_type):
    """How often the step timer synchronizes torch.npu and torch.cuda for a device of this type."""
    cuda_calls = []
    torch.cuda.synchronize = lambda device=None: cuda_calls.append(device)
    before = len(torch_npu.synchronize_calls)
    timer = StepTimer(os.devnull, SimpleNamespace(type=device_type), 1, "sample")
    timer.start()
    timer.stop({"input_ids": torch.zeros(1, 3)})
    return {"npu": len(torch_npu.synchronize_calls) - before, "cuda": len(cuda_calls)}


def static_cache_write_on_npu():
    cache = torch.zeros(2, 3, 8, 4)
    states = torch.randn(2, 3, 1, 4)
    slots = torch.tensor([5])
    from transformers.models.llama import _llama_graph_patch_kv_cache

    _llama_graph_patch_kv_cache.write_cache(OnNpu(cache), states, slots)
    expected = torch.zeros(2, 3, 8, 4).index_copy_(2, slots, states)
    return {"scatter_updates": torch_npu.scatter_updates, "same_as_index_copy": torch.equal(cache, expected)}


def static_cache_installed():
    return importlib.util.find_spec("transformers.models.llama._llama_graph_patch_kv_cache") is not None


def timer_when_unset():
    """The step timer of a generate call without LLAMA_GRAPH_PATCH_TIMING."""
    os.environ["EXE_MODE"] = "eager"
    model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    runner = runtime.compile_for_generation(model, torch.zeros(1, 2))
    return runtime.step_timer(runner, torch.zeros(1, 2), "sample") is None


def main():
    os.environ.pop("LLAMA_GRAPH_PATCH_TIMING", None)
    report = {
        "stand_ins": [torchair.STAND_IN, torch_npu.STAND_IN],
        "max_autotune": compile_on_npu("max-autotune", torch.__version__),
        "reduce_overhead": compile_on_npu("reduce-overhead", "2.5.1"),
        "reduce_overhead_torch_2_1": compile_on_npu("reduce-overhead", "2.1.0+cpu"),
        "reduce_overhead_layers": compile_on_npu("reduce-overhead", "2.5.1", scope="layers"),
        "max_autotune_region": compile_on_npu("max-autotune", torch.__version__, scope="region"),
        "cache_compile": cache_compile_on_npu("reduce-overhead"),
        "timer_when_unset": timer_when_unset(),
        "synchronize": {kind: synchronize_calls(kind) for kind in ("npu", "cuda", "cpu")},
        "static_cache_write": static_cache_write_on_npu() if static_cache_installed() else None,
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
