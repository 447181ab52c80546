"""Checkpoints: safetensors weights + JSON config (with a format version) + optimizer and RNG
state, written atomically. Nothing is ever unpickled.

Layout of a run directory:

    run/checkpoints/step-00001000/   model.safetensors  ema.safetensors  config.json
                                     train_state.safetensors  train_state.json
                                     [guide.safetensors]  (the autoguidance snapshot, if any)
    run/checkpoints/latest           name of the newest complete checkpoint

A checkpoint directory is written under a temporary name, flushed, then renamed; only then is
``latest`` replaced (temp file + os.replace). A crash at any point leaves the previous
``latest`` pointing at a complete checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, or of another format version."""


def _fsync_dir(path: Path) -> None:
    """Best effort: some file systems cannot fsync a directory; the rename is still atomic."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def write_json_atomic(path, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _split_optimizer(opt_sd: dict) -> tuple[dict, dict]:
    """Optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors, meta = {}, {"param_groups": opt_sd["param_groups"], "state": {}}
    for idx, st in opt_sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().contiguous().cpu()
                meta["state"][str(idx)][k] = "__tensor__"
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _join_optimizer(tensors: dict, meta: dict) -> dict:
    state = {}
    for idx, st in meta["state"].items():
        state[int(idx)] = {k: (tensors[f"opt.{idx}.{k}"] if v == "__tensor__" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir, step: int, *, model, ema_model, config: dict, optimizer=None,
                    train_state: dict | None = None, rng: dict | None = None, keep: int = 2,
                    guide: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; keep the newest ``keep``.
    ``guide``: a state dict stored as guide.safetensors (the trainer's autoguidance snapshot)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    if not final.exists():
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=name + ".tmp-"))
        try:
            save_file(_contiguous(model.state_dict()), tmp / "model.safetensors")
            save_file(_contiguous(ema_model.state_dict()), tmp / "ema.safetensors")
            if guide is not None:
                save_file(_contiguous(guide), tmp / "guide.safetensors")
            tensors, meta = ({}, None) if optimizer is None else _split_optimizer(optimizer.state_dict())
            for k, v in (rng or {}).items():
                tensors[f"rng.{k}"] = v.contiguous().cpu()
            save_file(tensors, tmp / "train_state.safetensors")
            write_json_atomic(tmp / "train_state.json", {"step": step, "optimizer": meta, **(train_state or {})})
            write_json_atomic(tmp / "config.json", {"format_version": FORMAT_VERSION, "step": step, **config})
            _fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(root)
    latest = root / "latest"
    fd, tmpname = tempfile.mkstemp(dir=root, prefix="latest.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmpname, latest)
    _prune(root, keep, name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and ".tmp-" not in p.name)
    for p in done[:-keep] if keep > 0 else []:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob("step-*.tmp-*"):  # leftovers of a crash mid-write
        shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path) -> Path:
    """Resolve a run directory, a ``checkpoints`` directory or a checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {p}")
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    latest = root / "latest"
    if latest.is_file():
        cand = root / latest.read_text().strip()
        if (cand / "config.json").is_file():
            return cand
    done = sorted(q for q in root.glob("step-*") if q.is_dir() and ".tmp-" not in q.name
                  and (q / "config.json").is_file())
    if not done:
        raise CheckpointError(f"{p} holds no checkpoint (expected {p}/checkpoints/step-*/)")
    return done[-1]


def read_config(ckpt_dir) -> dict:
    ckpt_dir = find_checkpoint(ckpt_dir)
    try:
        cfg = json.loads((ckpt_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable checkpoint config {ckpt_dir}/config.json: {e}") from e
    v = cfg.get("format_version")
    if v != FORMAT_VERSION:
        raise CheckpointError(f"{ckpt_dir}: checkpoint format {v}, this diffusionlab reads {FORMAT_VERSION}")
    return cfg


def load_checkpoint(path) -> dict:
    """Everything a resume needs: config, weights, EMA weights, optimizer state, RNG states, and
    the guide snapshot (None when the checkpoint has none)."""
    ckpt = find_checkpoint(path)
    cfg = read_config(ckpt)
    try:
        model_sd = load_file(ckpt / "model.safetensors")
        ema_sd = load_file(ckpt / "ema.safetensors")
        guide_sd = load_file(ckpt / "guide.safetensors") if (ckpt / "guide.safetensors").exists() else None
        tensors = load_file(ckpt / "train_state.safetensors") if (ckpt / "train_state.safetensors").exists() else {}
        state = json.loads((ckpt / "train_state.json").read_text()) if (ckpt / "train_state.json").exists() else {}
    except Exception as e:  # safetensors raises its own error types on truncation
        raise CheckpointError(f"checkpoint {ckpt} is damaged: {e}") from e
    opt = _join_optimizer(tensors, state["optimizer"]) if state.get("optimizer") else None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return dict(path=ckpt, config=cfg, model=model_sd, ema=ema_sd, guide=guide_sd, optimizer=opt,
                train_state=state, rng=rng)
