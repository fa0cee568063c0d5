"""STAND-IN for Ascend's torch_npu (tests only, not the real package): records what it is asked."""

import torch

STAND_IN = True
scatter_updates = []  # (indices, axis, updates shape) per call
synchronize_calls = []


def scatter_update_(cache, indices, updates, axis):
    """Write updates[b] into cache[b] along `axis`, starting at indices[b], in place."""
    scatter_updates.append((indices.tolist(), axis, tuple(updates.shape)))
    data = getattr(cache, "data_on_cpu", cache)
    for row, start in enumerate(indices.tolist()):
        data[row].narrow(axis - 1, start, updates.shape[axis]).copy_(updates[row])
    return cache


class _NpuModule:
    """What torch_npu adds as torch.npu, as far as the patch uses it."""

    @staticmethod
    def synchronize(device=None):
        synchronize_calls.append(device)

    @staticmethod
    def get_device_name(device=None):
        return "Ascend stand-in"


torch.npu = _NpuModule()
