"""Step timing: the device-synchronized wall time of every forward step, written as JSON lines after the
generation loop (LLAMA_GRAPH_PATCH_TIMING)."""

import json
import time

import torch


class StepTimer(object):
    """Times the forward steps of one generate call; keeps them in memory until `write`: no file I/O in the loop."""

    def __init__(self, path, device, batch_size, method):
        self.path = path
        self.batch_size = int(batch_size)  # rows the model sees: batch x beams in the beam searches
        self.method = method
        self.clock = time.perf_counter
        self.synchronize = synchronizer(device)
        self.started = 0.0
        self.steps = []  # (milliseconds, tokens fed) per step

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
        """Append one JSON line per step: the first step of a generate call is its prefill."""
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


def synchronizer(device):
    """A function that waits for the device's queued work: torch.npu's on npu, torch.cuda's on cuda, none on cpu."""
    if device.type == "npu":
        return torch.npu.synchronize
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
