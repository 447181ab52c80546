"""The checkpoints a server may run: those found under the folder it was started with.

A checkpoint's ``id`` is its run folder relative to that root (``demo``, ``models/class``),
never a path the browser chose: ``resolve`` accepts only ids that name a run folder which,
symlinks resolved, lies inside the root. Each entry describes the model from its config.json
alone (kind, process, backbone, steps trained, sampling defaults, a guide snapshot) and, where
the run wrote one, the demo's measured numbers (``eval.json``). Models are loaded on first use
through the public loader (``models.loading.load_denoiser``) and kept (a few at a time).

LoRA adapters (folders holding ``lora.json``, written by ``diffusionlab finetune``) are found by
the same walk: ``adapters`` lists them with the id of their base where the base lies under the
root, ``resolve_adapter`` maps an adapter id to its folder under the same rules as ``resolve``,
and ``load(cid, lora=((aid, scale), ...))`` applies them. A LoRA run's own ``checkpoints/``
(kind "lora") is not a model: ``describe`` leaves it out.
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

    def _folders(self):
        """Every folder under the root (symlinks not followed, hidden folders and ``checkpoints``
        skipped, at most ``MAX_DEPTH`` levels down) with its file names."""
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            depth = len(here.relative_to(self.root).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "checkpoints")
            if depth >= MAX_DEPTH:
                dirnames[:] = []
            yield here, filenames

    def _run_folders(self):
        for here, _ in self._folders():
            if _is_model(here):
                yield here

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
        return self._resolve(cid, _is_model, "checkpoint", "checkpoint")

    def resolve_adapter(self, aid) -> Path:
        """The folder of LoRA adapter id ``aid`` (its path relative to the root, as ``adapters``
        lists it): a ``NotFound`` (param "lora") unless, symlinks resolved, it lies inside the
        root and holds lora.json."""
        from ...models.lora import RECORD

        return self._resolve(aid, lambda p: (p / RECORD).is_file(), "LoRA adapter", "lora")

    def _resolve(self, cid, found, what: str, param: str) -> Path:
        """``root / cid`` if ``cid`` is a relative id whose folder, symlinks resolved, lies inside
        the root and is ``found``; else a ``NotFound`` naming ``what``."""
        if not isinstance(cid, str) or not cid or len(cid) > 512 or "\x00" in cid or "\\" in cid:
            raise NotFound(f"no {what} {cid!r} on this server", param=param)
        parts = cid.split("/")
        if cid.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
            raise NotFound(f"no {what} {cid!r} on this server: ids are the names GET /api/checkpoints lists",
                           param=param)
        path = (self.root / cid).resolve()
        if not _inside(path, self.root) or not found(path):
            raise NotFound(f"no {what} {cid!r} on this server", param=param)
        return path

    def config(self, cid) -> dict:
        from ...models.checkpoint import CheckpointError
        from ...models.loading import recorded_config

        try:
            return recorded_config(self.resolve(cid))
        except CheckpointError as e:
            raise NotFound(f"checkpoint {cid!r} is unreadable: {e}", param="checkpoint") from None

    def describe(self, cid) -> dict | None:
        """What the page lists for ``cid``; None for a classifier, autoencoder or LoRA run (nothing
        to sample: a LoRA run is an adapter, listed by ``adapters``)."""
        from ...nn.diffusers_net import EMBEDDINGS_ENCODER

        cfg = self.config(cid)
        if cfg.get("kind") in ("classifier", "autoencoder", "lora"):
            return None
        if (cfg.get("conditioning") or {}).get("encoder") == EMBEDDINGS_ENCODER:
            return None  # a diffusers text model takes prompt embeddings: the Python API's, not the page's
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

    # ------------------------------------------------------------ LoRA adapters

    def adapters(self) -> list[dict]:
        """Every LoRA adapter folder under the root (one holding lora.json), as ``adapter``
        describes it; unreadable ones are left out."""
        out, hashes = [], {}
        for here, files in self._folders():
            if "lora.json" not in files:
                continue
            try:
                aid = here.relative_to(self.root).as_posix()
                out.append(self._adapter_entry(aid, self._record(here, aid), hashes))
            except UserError:
                continue
        return out

    def adapter(self, aid) -> dict:
        """Adapter ``aid``: {"id", "base" (the id of its base checkpoint when that lies under the
        root, else None), "base_matches" (whether that base's current content hash is the one the
        adapter was trained on; None when the base is not on this server), "rank", "alpha",
        "targets", "step", "data", "digits"}."""
        return self._adapter_entry(aid, self._record(self.resolve_adapter(aid), aid))

    def _record(self, path: Path, aid: str):
        from ...models.checkpoint import CheckpointError
        from ...models.lora import read_adapter

        try:
            return read_adapter(path)
        except CheckpointError as e:
            raise UserError(f"the LoRA adapter {aid!r} is unreadable: {e.message}", param="lora") from None

    def _base_id(self, rec) -> str | None:
        """The checkpoint id of an adapter's base (a run, checkpoints or step folder), None when
        it is not a checkpoint under the root."""
        try:
            base = Path(rec.base).resolve()   # read_adapter made it absolute or relative to the cwd
        except OSError:
            return None
        if base.parent.name == "checkpoints":
            base = base.parent.parent
        elif base.name == "checkpoints":
            base = base.parent
        if not _inside(base, self.root) or base == self.root:
            return None
        bid = base.relative_to(self.root).as_posix()
        try:
            self.resolve(bid)
        except NotFound:
            return None
        return bid

    def _hash(self, cid: str, cache: dict | None = None) -> str | None:
        """The current content hash of checkpoint ``cid`` (None when unreadable)."""
        from ...models.checkpoint import CheckpointError, content_hash

        if cache is not None and cid in cache:
            return cache[cid]
        try:
            h = content_hash(self.resolve(cid))
        except (CheckpointError, NotFound, OSError):
            h = None
        if cache is not None:
            cache[cid] = h
        return h

    def _adapter_entry(self, aid: str, rec, hashes: dict | None = None) -> dict:
        bid = self._base_id(rec)
        matches = None if bid is None else self._hash(bid, hashes) == rec.base_sha256
        r = rec.record
        return {"id": aid, "base": bid, "base_matches": matches,
                "rank": rec.rank, "alpha": rec.alpha, "targets": rec.targets, "step": rec.step,
                "data": r.get("data"), "digits": r.get("digits")}

    def check_adapter(self, aid, cid) -> dict:
        """Adapter ``aid`` (``adapter``), refused (``UserError``, param "lora") unless it was
        trained on checkpoint ``cid``: its base is ``cid``, or a checkpoint with ``cid``'s
        content (a copy)."""
        entry = self.adapter(aid)
        if entry["base"] == cid:
            return entry
        rec = self._record(self.resolve_adapter(aid), aid)
        current = self._hash(cid)
        if current is not None and current == rec.base_sha256:
            return entry
        trained = f"on {entry['base']!r}" if entry["base"] else "on a checkpoint that is not on this server"
        raise UserError(f"the LoRA adapter {aid!r} was trained {trained}, not on {cid!r}: apply it to its own base "
                        f"(GET /api/checkpoints lists each checkpoint's adapters)", param="lora")

    # ------------------------------------------------------------ loading

    def load(self, cid, weights: str = "ema", lora=()):
        """The checkpoint's denoiser (``load_denoiser``), cached; ``weights`` 'guide' is its
        autoguidance snapshot. ``lora``: (adapter id, scale) pairs applied to it (scale 0: the
        base, exactly); an adapter trained on another base (or on an older state of this one)
        is a ``UserError`` with param "lora"."""
        from ...models.checkpoint import CheckpointError
        from ...models.loading import load_denoiser

        run = self.resolve(cid)
        adapters = []
        for aid, scale in lora:
            path = self.resolve_adapter(aid)
            try:
                stamp = (path / "lora.json").stat().st_mtime_ns, (path / "adapter_model.safetensors").stat().st_mtime_ns
            except OSError:
                stamp = None
            adapters.append((aid, str(path), float(scale), stamp))
        key = (str(run), weights, tuple((p, s, st) for _, p, s, st in adapters))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        if adapters:
            current = self._hash(cid)
            for aid, path, _, _ in adapters:
                rec = self._record(Path(path), aid)
                if rec.base_sha256 != current:
                    base = self._base_id(rec)
                    why = (f"checkpoint {cid!r} has changed since the adapter was trained on it" if base == cid
                           else f"it was trained on {base!r}" if base else
                           "it was trained on a checkpoint that is not on this server")
                    raise UserError(f"the LoRA adapter {aid!r} does not fit checkpoint {cid!r}: {why} (content hash "
                                    f"{rec.base_sha256[:16]}, not {(current or '?')[:16]})", param="lora")
        try:
            den = load_denoiser(run, weights=weights, lora=[f"{path}:{scale!r}" for _, path, scale, _ in adapters])
        except CheckpointError as e:
            if adapters:
                names = ", ".join(repr(a) for a, *_ in adapters)
                raise UserError(f"the LoRA adapter(s) {names} cannot be applied to {cid!r}: {e.message}",
                                param="lora") from None
            raise NotFound(f"checkpoint {cid!r}: {e}", param="checkpoint") from None
        with self._lock:
            self._loaded[key] = den
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
        return den


def _is_model(path: Path) -> bool:
    """A run folder (its ``checkpoints/``) or a diffusers folder (``models.diffusers_io``)."""
    from ...models.diffusers_io import is_diffusers_folder

    return (path / "checkpoints").is_dir() or is_diffusers_folder(path)


def _report(run: Path) -> dict | None:
    """The demo's measured numbers, where the run wrote its ``eval.json``."""
    try:
        m = json.loads((run / "eval.json").read_text()).get("metrics_prompted") or {}
    except (OSError, ValueError, AttributeError):
        return None
    keys = {"requested_accuracy": "accuracy", "confident_fraction": "confident", "fd_ratio": "fd_over_floor"}
    out = {v: m[k] for k, v in keys.items() if isinstance(m.get(k), (int, float))}
    return out or None
