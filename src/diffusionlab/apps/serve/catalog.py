"""The checkpoints a server may run: those found under the folder it was started with.

A checkpoint's ``id`` is its run folder relative to that root (``demo``, ``models/class``),
never a path the browser chose: ``resolve`` accepts only ids that name a run folder which,
symlinks resolved, lies inside the root. Each entry describes the model from its config.json
alone (kind, process, backbone, steps trained, sampling defaults, a guide snapshot) and, where
the run wrote one, the demo's measured numbers (``eval.json``). Models are loaded on first use
through the public loader (``models.loading.load_denoiser``) and kept (a few at a time).
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

from ...errors import UserError

COND_KINDS = {"none": "unconditional", "class": "class", "text": "text", "image": "image", "vector": "vector"}
MAX_DEPTH = 4            # run folders are looked for this many levels below the root
KEEP_LOADED = 3          # models kept in memory (least recently used dropped)


class NotFound(UserError):
    """An id that names no checkpoint of this server (a 404)."""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


class Catalog:
    """The run folders under ``root`` that hold a diffusion checkpoint."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UserError(f"{root} is not a folder", param="runs")
        self._loaded: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def _run_folders(self):
        for dirpath, dirnames, _ in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            depth = len(here.relative_to(self.root).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "checkpoints")
            if (here / "checkpoints").is_dir():
                yield here
            if depth >= MAX_DEPTH:
                dirnames[:] = []

    def list(self) -> list[dict]:
        """Every run folder's description (``describe``); unreadable ones are left out."""
        out = []
        for run in self._run_folders():
            try:
                entry = self.describe(run.relative_to(self.root).as_posix())
            except UserError:
                continue
            if entry is not None:
                out.append(entry)
        return out

    def resolve(self, cid) -> Path:
        """The run folder of checkpoint id ``cid`` (a ``NotFound`` unless it lies inside the root)."""
        if not isinstance(cid, str) or not cid or len(cid) > 512 or "\x00" in cid or "\\" in cid:
            raise NotFound(f"no checkpoint {cid!r} on this server", param="checkpoint")
        parts = cid.split("/")
        if cid.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
            raise NotFound(f"no checkpoint {cid!r} on this server: ids are the names GET /api/checkpoints lists",
                           param="checkpoint")
        path = (self.root / cid).resolve()
        if not _inside(path, self.root) or not (path / "checkpoints").is_dir():
            raise NotFound(f"no checkpoint {cid!r} on this server", param="checkpoint")
        return path

    def config(self, cid) -> dict:
        from ...models.checkpoint import CheckpointError, read_config

        try:
            return read_config(self.resolve(cid))
        except CheckpointError as e:
            raise NotFound(f"checkpoint {cid!r} is unreadable: {e}", param="checkpoint") from None

    def describe(self, cid) -> dict | None:
        """What the page lists for ``cid``; None for a classifier or autoencoder run (nothing to sample)."""
        cfg = self.config(cid)
        if cfg.get("kind") in ("classifier", "autoencoder"):
            return None
        run = self.resolve(cid)
        cond = cfg.get("conditioning") or {}
        net = cfg.get("network", {})
        ncfg = net.get("config", {})
        kind = COND_KINDS.get(cond.get("kind") or "none", "unconditional")
        sampling = cfg.get("sampling") or {}
        train = cfg.get("train") or {}
        return {
            "id": cid, "kind": kind, "process": cfg.get("diffusion", {}).get("process"),
            "objective": cfg.get("diffusion", {}).get("objective"), "backbone": net.get("arch"),
            "steps_trained": cfg.get("step"), "image_shape": (cfg["latent"]["pixel_shape"] if cfg.get("latent")
                            else [int(ncfg.get("channels", 3)), *cfg.get("image_size", [])]),
            "classes": cond.get("class_names") or (list(range(int(ncfg["num_classes"]))) if ncfg.get("num_classes") else None),
            "encoder": cond.get("encoder") or (ncfg.get("text_encoder") if kind == "text" else None),
            "sampler": sampling.get("sampler"), "steps": sampling.get("steps"), "guidance": sampling.get("guidance"),
            "has_guide": cfg.get("guide_step") is not None, "guide_step": cfg.get("guide_step"),
            "data": train.get("data"), "report": _report(run),
            "latent": {k: (cfg.get("latent") or {}).get(k) for k in ("latent_shape", "pixel_shape", "embedded")}
            if cfg.get("latent") else None,
        }

    def load(self, cid, weights: str = "ema"):
        """The checkpoint's denoiser (``load_denoiser``), cached; ``weights`` 'guide' is its
        autoguidance snapshot."""
        from ...models.checkpoint import CheckpointError
        from ...models.loading import load_denoiser

        run = self.resolve(cid)
        key = (str(run), weights)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        try:
            den = load_denoiser(run, weights=weights)
        except CheckpointError as e:
            raise NotFound(f"checkpoint {cid!r}: {e}", param="checkpoint") from None
        with self._lock:
            self._loaded[key] = den
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
        return den


def _report(run: Path) -> dict | None:
    """The demo's measured numbers, where the run wrote its ``eval.json``."""
    try:
        m = json.loads((run / "eval.json").read_text()).get("metrics_prompted") or {}
    except (OSError, ValueError, AttributeError):
        return None
    keys = {"requested_accuracy": "accuracy", "confident_fraction": "confident", "fd_ratio": "fd_over_floor"}
    out = {v: m[k] for k, v in keys.items() if isinstance(m.get(k), (int, float))}
    return out or None
