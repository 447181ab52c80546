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


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """The CPU model, the vector flags that decide bf16 speed, and its kind in one line
    ("AMX + AVX-512 BF16", "AVX-512", "AVX2", or "other"): recorded in run.json, since the
    project's machines change CPU between sessions and bf16 runs at a third of the speed
    without native support."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: model and flags stay unknown
        model, flags = "unknown", set()
    have = [f for f in CPU_FLAGS if f in flags]
    kind = ("AMX + AVX-512 BF16" if {"amx_bf16", "avx512_bf16"} <= flags else "AVX-512" if "avx512f" in flags
            else "AVX2" if "avx2" in flags else "other")
    return {"model": model, "flags": have, "kind": kind, "fast_bf16": cpu_has_fast_bf16()}
