"""The process group of a multi-process run, from the launchers the field uses.

``torchrun --nproc-per-node N -m diffusionlab train ...`` and ``accelerate launch -m diffusionlab
train ...`` both start N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` set; ``init`` builds the process group from them (NCCL when the run is on CUDA,
gloo otherwise). Without a launcher (or with ``WORLD_SIZE=1``) nothing is initialised and every
helper here is the identity of a world of one, so one process and N processes run the same code.

The timeout of every collective is ``DIFFUSIONLAB_DIST_TIMEOUT`` seconds (default
``DEFAULT_TIMEOUT_S`` = 600): a rank that waits longer than that for the others raises, so a
stopped or hung rank ends the run instead of hanging it. A rank that dies outright is noticed at
the next collective (gloo: at once; NCCL: within the timeout).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "DIFFUSIONLAB_DIST_TIMEOUT"


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, logs and writes the run's files."""
        return self.rank == 0


def launched_world() -> World:
    """The world the launcher's environment describes (a world of one without a launcher)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def timeout_s() -> float:
    """The collectives' timeout in seconds (``DIFFUSIONLAB_DIST_TIMEOUT``, default 600)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        from ..errors import UserError

        raise UserError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def init(device_type: str) -> World:
    """Initialise the process group from the launcher's environment once (later calls return the
    same world); NCCL for ``device_type`` "cuda", gloo otherwise. A world of one initialises
    nothing."""
    if dist.is_available() and dist.is_initialized():
        return world()
    w = launched_world()
    if w.size <= 1:
        return w
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return world()


def world() -> World:
    """The current world (a world of one when no process group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), launched_world().local_rank)


def active() -> bool:
    return world().size > 1


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int, w: World | None = None) -> range:
    """This rank's contiguous share of ``n`` items (the first ``n % size`` ranks take one more)."""
    w = w or world()
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return range(start, start + base + (w.rank < extra))


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order (shapes may differ in dim 0);
    the identity in a world of one. Every rank receives the result."""
    if not active():
        return t
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.detach().cpu())
    return torch.cat(parts).to(t.device)


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` in a world of one)."""
    if not active():
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this process with exit status ``code``.

    One rank of a launched multi-process run (torchrun, accelerate) leaves through ``os._exit``
    once logging and its output are flushed: torch's gloo teardown aborts a rank now and then
    during interpreter shutdown, after every Python frame has returned ("terminate called
    without an active exception", SIGABRT; measured here: 1 launch in 80 of 2 gloo ranks where
    one rank still works when the other exits). Call it when the work is done, the files are closed and the process group
    is destroyed (``destroy``): skipping the interpreter's teardown then loses nothing. A world
    of one exits normally (``sys.exit``)."""
    if launched_world().size > 1:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken stream has nothing left to flush
                stream.flush()
        os._exit(code)
    sys.exit(code)


COMM_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe",
                "processgroup", "socket", "peer")


def is_comm_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another rank died or stopped answering."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in COMM_MARKERS)


__all__ = ["World", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "init", "world", "launched_world", "active", "barrier",
           "shard", "gather_cat", "gather_objects", "broadcast", "destroy", "exit_process", "timeout_s",
           "is_comm_failure"]
