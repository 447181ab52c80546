"""Where and in which precision to run: device, autocast dtype, threads. Used by the trainer,
the CLI and the demo alike (kept below all of them)."""
from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """None means fp32. 'auto': bf16 on CPUs with native bf16 (AVX512-BF16/AMX) and on CUDA
    GPUs that support it, fp16 on other CUDA GPUs, fp32 elsewhere."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name != "auto":
        raise ValueError(f"unknown precision {name!r}: auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def set_threads(n: int | None) -> int:
    """Use all cores for torch's intra-op pool (data is in memory: no loader workers compete)."""
    n = n or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (n or os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()
