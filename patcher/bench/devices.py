"""The device a benchmark worker runs on: which one, its dtype, its name, and what it measures of memory."""

from __future__ import annotations

import os
import resource
import time

# What the bandwidth probe reads: far larger than a CPU's last-level cache (32 MiB on this project's machine),
# so that it streams from memory; on an accelerator, far larger than its L2.
STREAM_BYTES = {"cpu": 2**30, "cuda": 4 * 2**30, "npu": 4 * 2**30}


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


def stream_bandwidth_gbs(device, torch, synchronize, repeats: int = 5) -> float:
    """The memory bandwidth this process streams: the best of `repeats` reads (a sum) of a buffer far larger
    than the last-level cache, device-synchronized: what a decode step that reads every weight once could reach."""
    size = STREAM_BYTES.get(device.type, 2**30)
    # Random values: pages of equal content may share memory under a hypervisor (a buffer of ones read at
    # 55-60 GB/s in some processes on this project's machine). Random values vary too, from moment to moment:
    # stats.against_the_limit.
    buffer = torch.rand(size // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first read warms up
        synchronize()
        started = time.perf_counter()
        buffer.sum()
        synchronize()
        best = min(best, time.perf_counter() - started)
    del buffer
    reset_peak_memory(device, torch)  # the buffer is not the model's memory
    return size / best / 1e9


def reset_peak_memory(device, torch) -> None:
    if device.type in ("cuda", "npu"):
        getattr(torch, device.type).reset_peak_memory_stats()
        return
    try:  # Linux: the process's high-water resident size starts again from what it holds now
        with open("/proc/self/clear_refs", "w") as sink:
            sink.write("5")
    except OSError:
        pass


def peak_memory_mb(device, torch) -> float:
    """Most device memory torch allocated (cuda, npu), or the process's peak resident size (cpu), since the
    start or the last reset_peak_memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "npu":
        return torch.npu.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as source:
            for line in source:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:  # not Linux
        pass
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
