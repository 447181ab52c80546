"""The test-only fault hook: named points in the code where a test can kill the process or make a
write fail, as a crash, a full disk or a read-only mount would. It does nothing unless the
environment variable ``DIFFUSIONLAB_FAULT`` is set (one dictionary lookup per point).

    DIFFUSIONLAB_FAULT="checkpoint.ema#2=kill"          SIGKILL at the 2nd time ema.safetensors is written
    DIFFUSIONLAB_FAULT="write:metrics.jsonl=ENOSPC"     the first append to metrics.jsonl: disk full
    DIFFUSIONLAB_FAULT="checkpoint.*=EROFS,write:*.png=EACCES"

Each rule is ``POINT[#N]=ACTION``: POINT a name or a glob over names, N the hit it fires on
(1-based, default 1; ``#N+`` fires on that hit and every later one), ACTION ``kill`` (SIGKILL:
nothing runs after it, as a power cut or the OOM killer) or an errno name (``ENOSPC``, ``EROFS``,
``EACCES``, ``EIO``, ...) raised as ``OSError`` naming the file.

The points (``POINTS``): every file of a checkpoint before it is written (``checkpoint.model``,
``checkpoint.ema``, ``checkpoint.guide``, ``checkpoint.train_state``, ``checkpoint.train_state_json``,
``checkpoint.config``, ``checkpoint.manifest``), ``checkpoint.rename`` (all files written, before
the folder is renamed into place), ``checkpoint.latest`` (the ``latest`` pointer),
``checkpoint.prune`` (before each older checkpoint is removed), and ``write:<file name>`` at every
write of the one atomic-write helper (run.json, grids, plots, caches, ...) and every append to
metrics.jsonl.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import signal

FAULT_ENV = "DIFFUSIONLAB_FAULT"
POINTS = ("checkpoint.model", "checkpoint.ema", "checkpoint.guide", "checkpoint.train_state",
          "checkpoint.train_state_json", "checkpoint.config", "checkpoint.manifest", "checkpoint.rename",
          "checkpoint.latest", "checkpoint.prune", "write:<file name>")
_hits: dict[str, int] = {}


def _rules(spec: str) -> list[tuple[str, int, bool, str]]:
    rules = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, action = part.partition("=")
        point, _, nth = point.partition("#")
        every = nth.endswith("+")
        n = int(nth.rstrip("+") or 1)
        action = action.strip() or "kill"
        if action != "kill" and not hasattr(errno, action):
            raise ValueError(f"{FAULT_ENV}: unknown action {action!r} (kill or an errno name such as ENOSPC)")
        rules.append((point.strip(), n, every, action))
    return rules


def hit(point: str, path=None) -> None:
    """Fault point ``point`` (about to write ``path``): fire the rule that names it, if any."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for pattern, n, every, action in _rules(spec):
        if not fnmatch.fnmatchcase(point, pattern):
            continue
        key = f"{pattern}#{n}"
        _hits[key] = _hits.get(key, 0) + 1
        if _hits[key] == n or every and _hits[key] > n:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            code = getattr(errno, action)
            raise OSError(code, f"{os.strerror(code)} (injected by {FAULT_ENV})", str(path) if path else point)


def reset() -> None:
    """Forget the hit counts (tests that set the variable more than once in one process)."""
    _hits.clear()


__all__ = ["FAULT_ENV", "POINTS", "hit", "reset"]
