"""The graph-mode patch's per-step timing, appended to transformers/generation/utils.py.

Same rules as runtime.py. With LLAMA_GRAPH_PATCH_TIMING unset the generation loop pays two `is not None`
checks per step and nothing else.
"""

# ---------------------------------------------------------------------------------------------------
# Added by llama-graph-patch (graph-mode patch); `llama-graph-patch revert` removes it.
# LLAMA_GRAPH_PATCH_TIMING=PATH: see the llama-graph-patch README.
# ---------------------------------------------------------------------------------------------------


def _llama_graph_patch_step_timer(input_ids, method):
    """A timer for every forward step when LLAMA_GRAPH_PATCH_TIMING names a file, else None."""
    import os

    path = os.environ.get("LLAMA_GRAPH_PATCH_TIMING")
    if not path:
        return None
    return _LlamaGraphPatchStepTimer(path, input_ids.device, input_ids.shape[0], method)


class _LlamaGraphPatchStepTimer(object):
    """Device-synchronized wall time of each forward step, written as JSON lines when generation ends."""

    def __init__(self, path, device, batch_size, method):
        import time

        self.path = path
        self.batch_size = int(batch_size)  # rows the model sees: batch x beams in the beam searches
        self.method = method
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
                "method": self.method,
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
