"""Helpers the graph-mode patch appends to transformers/generation/utils.py.

The codemod copies every statement below this docstring. Rules for this file, checked by tests:
- import nothing from llama-graph-patch: a patched transformers must outlive the tool;
- import inside functions, so that nothing rebinds names the host module already uses (it binds
  `logging` to transformers' own logging module);
- parse with the Python 3.8 grammar and run on torch 2.1 through 2.14.
"""

# ---------------------------------------------------------------------------------------------------
# Added by llama-graph-patch (graph-mode patch); `llama-graph-patch revert` removes it.
# EXE_MODE=dynamo|eager, GRAPH_MODE=max-autotune|reduce-overhead, LLAMA_GRAPH_PATCH_INDUCTOR_MODE,
# LLAMA_GRAPH_PATCH_TIMING=PATH: see the llama-graph-patch README.
# ---------------------------------------------------------------------------------------------------

# torchair's max-autotune compiles the whole graph ahead (GE); reduce-overhead captures it once and
# replays it (aclgraph). The inductor modes closest in meaning (on a CPU, reduce-overhead takes inductor's
# C++ wrapper instead, below):
_LLAMA_GRAPH_PATCH_INDUCTOR_MODES = {"max-autotune": "default", "reduce-overhead": "reduce-overhead"}
_LLAMA_GRAPH_PATCH_INDUCTOR_OVERRIDES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _llama_graph_patch_setting(name, default, allowed):
    """The value of environment variable `name`; anything outside `allowed` is an error, not a fallback."""
    import os

    value = os.environ.get(name, default)
    if value not in allowed:
        raise ValueError(
            "llama-graph-patch: %s=%r is not allowed; use one of: %s" % (name, value, ", ".join(allowed))
        )
    return value


def _llama_graph_patch_compile(model, input_ids):
    """Return `model` compiled as EXE_MODE and GRAPH_MODE ask, for the device `input_ids` live on."""
    import logging
    import os

    import torch

    exe_mode = _llama_graph_patch_setting("EXE_MODE", "dynamo", ("dynamo", "eager"))
    graph_mode = _llama_graph_patch_setting("GRAPH_MODE", "max-autotune", ("max-autotune", "reduce-overhead"))
    logger = logging.getLogger("llama_graph_patch")
    device_type = input_ids.device.type
    if exe_mode == "eager":
        logger.info("llama-graph-patch: eager mode on %s (EXE_MODE=eager), no torch.compile", device_type)
        return model
    if device_type == "npu":
        options = {"backend": _llama_graph_patch_torchair_backend(graph_mode)}
        backend = "torchair (%s)" % graph_mode
    elif (
        device_type == "cpu"
        and graph_mode == "reduce-overhead"
        and "LLAMA_GRAPH_PATCH_INDUCTOR_MODE" not in os.environ
        and not _llama_graph_patch_torch_older_than(torch.__version__, (2, 5))
    ):
        # A CPU has no graphs to capture; the per-step host overhead that capture removes on a device is,
        # on a CPU, Python launching each kernel. Inductor's C++ wrapper launches them from compiled code.
        options = {"backend": "inductor", "options": {"cpp_wrapper": True}}
        backend = "inductor (mode=default, cpp_wrapper=True)"
    else:
        inductor_mode = _llama_graph_patch_setting(
            "LLAMA_GRAPH_PATCH_INDUCTOR_MODE",
            _LLAMA_GRAPH_PATCH_INDUCTOR_MODES[graph_mode],
            _LLAMA_GRAPH_PATCH_INDUCTOR_OVERRIDES,
        )
        options = {"backend": "inductor", "mode": inductor_mode}
        backend = "inductor (mode=%s)" % inductor_mode
    logger.info(
        "llama-graph-patch: dynamo mode %s on %s, backend=%s, dynamic=True, fullgraph=True",
        graph_mode,
        device_type,
        backend,
    )
    # One compiled wrapper per model and setting: a fresh torchair backend object on every generate
    # call would make dynamo compile again. Kept in __dict__ so nn.Module does not register it.
    key = "_llama_graph_patch_compiled_" + backend
    compiled = model.__dict__.get(key)
    if compiled is None:
        compiled = torch.compile(model, dynamic=True, fullgraph=True, **options)
        model.__dict__[key] = compiled
    return compiled


def _llama_graph_patch_torchair_backend(graph_mode):
    """The torchair backend exactly as the Ascend guide configures it."""
    import torch

    try:
        import torchair
        from torchair.configs.compiler_config import CompilerConfig
    except ImportError as error:
        raise ImportError(
            "llama-graph-patch: the model is on an NPU and EXE_MODE=dynamo needs torchair, which could not be "
            "imported (%s). Install torchair for your torch_npu (https://gitee.com/ascend/torchair) or run with "
            "EXE_MODE=eager." % error
        ) from error
    config = CompilerConfig()
    if graph_mode == "reduce-overhead":
        config.mode = "reduce-overhead"
        if _llama_graph_patch_torch_older_than(torch.__version__, (2, 5)):
            # torch < 2.5 can fail in the reinplace_inplaceable_ops pass (the guide's workaround).
            config.debug.aclgraph.disable_reinplace_inplaceable_ops_pass = True
    config.experimental_config.frozen_parameter = True
    return torchair.get_npu_backend(compiler_config=config)


def _llama_graph_patch_torch_older_than(version, major_minor):
    """Compare "2.1.0+cpu"-style versions without packaging, which the target may lack."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
    return tuple(parts) < tuple(major_minor)


def _llama_graph_patch_step_timer(input_ids):
    """A timer for every forward step when LLAMA_GRAPH_PATCH_TIMING names a file, else None."""
    import os

    path = os.environ.get("LLAMA_GRAPH_PATCH_TIMING")
    if not path:
        return None
    return _LlamaGraphPatchStepTimer(path, input_ids.device, input_ids.shape[0])


class _LlamaGraphPatchStepTimer(object):
    """Device-synchronized wall time of each forward step, written as JSON lines when generation ends."""

    def __init__(self, path, device, batch_size):
        import time

        self.path = path
        self.batch_size = int(batch_size)
        self.clock = time.perf_counter
        self.synchronize = _llama_graph_patch_synchronizer(device)
        self.started = 0.0
        self.steps = []  # (milliseconds, tokens fed) per step, kept in memory: no file I/O in the loop

    def start(self):
        self.synchronize()
        self.started = self.clock()

    def stop(self, model_inputs):
        self.synchronize()
        elapsed_ms = (self.clock() - self.started) * 1000.0
        fed = model_inputs.get("input_ids")
        if fed is None:
            fed = model_inputs["inputs_embeds"]
        self.steps.append((elapsed_ms, int(fed.shape[1])))

    def write(self):
        import json

        lines = []
        for step, (elapsed_ms, input_len) in enumerate(self.steps):
            record = {
                "step": step,
                "phase": "prefill" if step == 0 else "decode",
                "ms": elapsed_ms,
                "batch_size": self.batch_size,
                "input_len": input_len,
            }
            lines.append(json.dumps(record) + "\n")
        with open(self.path, "a", encoding="utf-8") as sink:
            sink.write("".join(lines))
        self.steps = []


def _llama_graph_patch_synchronizer(device):
    """Wait for the device's queued work: torch.npu on npu, torch.cuda on cuda, nothing on cpu."""
    import torch

    if device.type == "npu":
        return torch.npu.synchronize
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
