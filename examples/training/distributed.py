"""Process setup: device, mixed precision, and DDP under ``torchrun``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision.

    ``auto``: bf16 on GPUs that support it, fp16 on older ones, off on the CPU (CPU
    autocast is slower than float32 for these convolutions and is not what the recipe
    was tuned with).
    """
    if device.type != "cuda":
        if mode in ("fp16", "bf16"):
            raise ValueError(f"--amp {mode} needs a GPU; mixed precision stays off on the CPU (use --amp off)")
        return None
    if mode == "off":
        return None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return torch.bfloat16 if mode == "bf16" else torch.float16


def setup(device: str, amp: str) -> Runtime:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL
    on GPUs, gloo on the CPU. A plain ``python -m`` run is one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank, world, dev, resolve_amp(amp, dev))


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], rt: Runtime) -> list[float]:
    """Sum a list of floats over every process."""
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)  # NCCL reduces GPU tensors only
    dist.all_reduce(t)
    return t.tolist()


def gather(obj, rt: Runtime) -> list:
    """Every process's ``obj``, in rank order."""
    if not rt.distributed:
        return [obj]
    out = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out
