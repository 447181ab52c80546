"""Helpers shared by the benchmark scripts in bench/ (import as ``common`` when a script is run
as ``python bench/<script>.py``: its folder is then first on sys.path).

Nothing here knows about a particular model: machine facts, FLOP counting, timing, the
matmul peak, and running a measurement in a fresh subprocess.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

RESULT_TAG = "RESULT "  # a child process reports its measurement as one line: RESULT {json}


# ---------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform's guess elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def precision_context(precision: str):
    """'fp32' runs as is; 'bf16' runs under CPU autocast to bfloat16."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}")


# ---------------------------------------------------------------------------------- FLOPs
def _cpu_sdpa_formulas() -> dict:
    """FlopCounterMode counts the CUDA kernels of scaled_dot_product_attention but not the CPU
    flash kernel, so attention would count as zero FLOPs on CPU for libraries that use SDPA and
    in full for those that write it as einsum/bmm. Map the CPU ops to torch's own SDPA
    formulas so every library's attention matmuls are counted alike."""
    try:
        from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
        aten = torch.ops.aten
        fwd_op = aten._scaled_dot_product_flash_attention_for_cpu
        bwd_op = aten._scaled_dot_product_flash_attention_for_cpu_backward
    except (ImportError, AttributeError):
        return {}

    def fwd(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    return {fwd_op: fwd, bwd_op: bwd}


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """Run fn() under FlopCounterMode; returns (fn's result, FLOPs). Only matmul-like ops
    (mm, bmm, conv, attention) are counted, as FlopCounterMode does; a multiply-add is 2 FLOPs."""
    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_formulas()) as counter:
        result = fn()
    return result, counter.get_total_flops()


# ---------------------------------------------------------------------------------- timing
def time_windows(step: Callable[[], None], windows: int, steps_per_window: int) -> list[float]:
    """Seconds taken by each of `windows` back-to-back windows of `steps_per_window` calls."""
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        out.append(time.perf_counter() - t0)
    return out


def median(values) -> float:
    return float(statistics.median(values))


def matmul_peak_gflops(dtype: torch.dtype, n: int, reps: int) -> float:
    """Best-of-`reps` throughput (GFLOP/s) of an n x n x n matmul in `dtype` with the threads
    torch is set to use: the practical peak that model-FLOPs utilisation is measured against."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, oneDNN/BLAS kernel selection
    best = min(time_windows(lambda: torch.mm(a, b), reps, 1))
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------- subprocesses
def emit_result(result: dict) -> None:
    """Child side: print the measurement as the one line the parent looks for."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(argv: list[str], threads: int, timeout: float | None = None) -> dict:
    """Parent side: run `python argv...` in a fresh process (own thread pools, allocator and
    peak RSS) and return the dict it emitted, or {"error": why} when it failed."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def report_header(title: str, command: str, precision: bool = True) -> list[str]:
    """The first lines of every stage report: title, date, the command and the CPU (model, kind
    from ``diffusionlab.core.devices.cpu_info``, cores, and the precision the kind implies)."""
    import datetime

    from diffusionlab.core.devices import cpu_info

    cpu = cpu_info()
    prec = f"; precision {'bf16' if cpu['fast_bf16'] else 'fp32'}" if precision else ""
    return [f"# {title}", "", f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- command: `{command}`", f"- CPU: {cpu['model']}, {cpu['kind']}; {os.cpu_count()} cores{prec}"]


def git_rev(cwd: str | None = None) -> str:
    """`git describe --always --dirty` of the tree the bench runs from, or "unknown"."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=cwd, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
