"""Speed figures logged every N steps: samples/s, share of time waiting on data, peak
memory, and on a known GPU the model FLOP utilisation (MFU)."""

from __future__ import annotations

import resource
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peak TFLOP/s per GPU (bf16/fp16 tensor cores, and fp32 with TF32 matmuls),
# from the vendors' data sheets (SXM parts; no sparsity). Matched by substring of the name.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp32": 494.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp32": 156.0},
    "A10G": {"bf16": 70.0, "fp32": 35.0},
    "L40S": {"bf16": 362.0, "fp32": 183.0},
    "L4": {"bf16": 121.0, "fp32": 60.0},
    "RTX 4090": {"bf16": 165.0, "fp32": 82.6},
    "RTX 3090": {"bf16": 71.0, "fp32": 35.6},
    "V100": {"bf16": 125.0, "fp32": 15.7},  # no bf16: the fp16 tensor-core figure
    "T4": {"bf16": 65.0, "fp32": 8.1},
}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's peak FLOP/s for `precision`, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():  # longer names first where one contains another
        if key in name:
            return 1e12 * peaks["fp32" if precision == "32" else "bf16"]
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak tensor memory on a GPU; on the CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class ThroughputMeter:
    """Times an interval of steps. `data_wait()` is told how long fetching a batch took; `read()` is called at
    a log step, after the host has synced with the device, so the wall time is real. With the
    device's peak and the model's FLOPs per sample (`count_flops`) it also reads MFU."""

    def __init__(self, device: torch.device, world_size: int = 1, peak: float | None = None) -> None:
        self.device = device
        self.world_size = world_size
        self.peak = peak
        """The device's peak FLOP/s (`peak_flops`); None: no MFU."""
        self.flops_per_sample: float | None = None
        self.reset()

    def count_flops(self, model: torch.nn.Module, step: Callable[[], tuple[torch.Tensor, int]]) -> None:
        """Count the training FLOPs per sample once, for MFU (nothing without a known peak).

        `step()` runs the training forward on a batch shaped like a training one and returns
        (loss, samples); the backward follows. The run is not disturbed: the RNG is forked,
        the model's buffers (BatchNorm statistics) are restored and its gradients cleared."""
        if not self.peak:
            return
        buffers = [b.detach().clone() for b in model.buffers()]
        counter = FlopCounterMode(display=False)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            with counter:
                loss, samples = step()
                loss.backward()
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        model.zero_grad(set_to_none=True)
        self.flops_per_sample = counter.get_total_flops() / samples

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.waiting = 0.0
        self.samples = 0

    def data_wait(self, seconds: float) -> None:
        self.waiting += seconds

    def add(self, samples: int) -> None:
        self.samples += samples

    def read(self) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        per_second = self.samples * self.world_size / elapsed  # all ranks together
        out = {
            "samples_per_s": per_second,
            "data_wait": self.waiting / elapsed,
            "peak_mem_gb": peak_memory_bytes(self.device) / 2**30,
        }
        if self.flops_per_sample and self.peak:
            out["mfu"] = per_second * self.flops_per_sample / (self.peak * self.world_size)
        self.reset()
        return out
