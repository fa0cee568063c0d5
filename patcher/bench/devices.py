"""The device a benchmark worker runs on: which one, its dtype, its name, and what it measures of memory."""

from __future__ import annotations

import os
import resource


def resolve_device(asked: str, torch):
    if asked == "npu" or asked == "auto" and npu_available():
        import torch_npu  # noqa: F401  (registers the npu device)

        return torch.device("npu")
    if asked == "cuda" or asked == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def rank_device(device, torch):
    """Under the launcher, the accelerator of this rank's LOCAL_RANK, made current (NCCL and HCCL expect it)."""
    if device.type == "cpu" or "LOCAL_RANK" not in os.environ:
        return device
    accelerator = getattr(torch, device.type)
    index, count = int(os.environ["LOCAL_RANK"]), accelerator.device_count()
    if index >= count:
        raise RuntimeError(f"local rank {index} needs {device.type}:{index}, but this machine shows {count} {device.type} devices")
    accelerator.set_device(index)
    return torch.device(device.type, index)


def npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.npu.is_available()


def resolve_dtype(asked: str, device, torch):
    if asked == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    return getattr(torch, asked)


def device_name(device, torch, cpu: str) -> str:
    """The accelerator's name, or the CPU's (`cpu`, as the patched transformers reads it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "npu":
        return torch.npu.get_device_name()
    return f"cpu ({cpu})"


def peak_memory_mb(device, torch) -> float:
    """Most device memory torch allocated (cuda, npu), or the process's peak resident size (cpu)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "npu":
        return torch.npu.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_bandwidth_gbs(device, torch) -> float | None:
    """Theoretical memory bandwidth of a CUDA device from its clock and bus width, where torch says."""
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    clock_khz = getattr(properties, "memory_clock_rate", None)
    bus_bits = getattr(properties, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
