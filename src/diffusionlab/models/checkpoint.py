"""Checkpoints: safetensors weights + JSON config (with a format version) + optimizer and RNG
state, written atomically and verified on load. Nothing is ever unpickled.

Layout of a run directory:

    run/checkpoints/step-00001000/   model.safetensors  ema.safetensors  config.json
                                     train_state.safetensors  train_state.json
                                     [guide.safetensors]  (the autoguidance snapshot, if any)
                                     manifest.json  (written last: size and sha256 of every file)
    run/checkpoints/latest           name of the newest complete checkpoint

A checkpoint directory is written under a temporary name, flushed, then renamed; only then is
``latest`` replaced (temp file + os.replace). A crash at any point leaves the previous
``latest`` pointing at a complete checkpoint. Writing a step that already exists replaces it
(never a silent skip). Pruning renames a folder out of the ``step-*`` namespace before deleting
it, so a kill mid-prune cannot leave a half-deleted folder that looks like a checkpoint.

A checkpoint is *intact* when its files match its manifest; one written before manifests
existed is intact when every file parses. ``resume_checkpoint`` falls back past damaged ones
(renamed aside to ``step-N.damaged``, so the resumed run can write that step again) to the
newest intact one; every error names the file it is about.
"""
from __future__ import annotations

from ..errors import UserError

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core import faults
from ..core.files import atomic_write, write_json_atomic

FORMAT_VERSION = 3          # config.json layout (loading.py); formats 1 and 2 are migrated on read
READABLE_FORMATS = (1, 2, 3)
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(UserError):
    """A checkpoint is missing, damaged, or of another format version. ``hint`` says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint=hint)


def _fsync_dir(path: Path) -> None:
    """Best effort: some file systems cannot fsync a directory; the rename is still atomic."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _contiguous(sd) -> dict:
    """A module's state dict (or a state dict itself: a LoRA run saves only its adapters) as
    contiguous CPU tensors."""
    sd = sd if isinstance(sd, dict) else sd.state_dict()
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


def file_sha256(path: Path) -> str:
    """The sha256 of a file (manifests, a LoRA adapter's weights file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(ckpt_dir: Path) -> None:
    """manifest.json: size and sha256 of every other file of the checkpoint (written last)."""
    files = sorted(p for p in Path(ckpt_dir).iterdir() if p.is_file() and p.name != MANIFEST)
    entries = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in files}
    write_json_atomic(Path(ckpt_dir) / MANIFEST, {"files": entries})


def save_checkpoint(run_dir, step: int, *, model, ema_model, config: dict, optimizer=None,
                    train_state: dict | None = None, rng: dict | None = None, keep: int = 2,
                    guide: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically (manifest last) and point ``latest`` at it; keep the
    newest ``keep``. ``model`` / ``ema_model``: modules or state dicts. An existing folder of the same step is replaced. ``guide``: a state dict
    stored as guide.safetensors (the trainer's autoguidance snapshot)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=name + ".tmp-"))
    try:  # faults.hit: test-only fault points (kill / injected write errors), inert unless set
        faults.hit("checkpoint.model", tmp / "model.safetensors")
        save_file(_contiguous(model), tmp / "model.safetensors")
        faults.hit("checkpoint.ema", tmp / "ema.safetensors")
        save_file(_contiguous(ema_model), tmp / "ema.safetensors")
        if guide is not None:
            faults.hit("checkpoint.guide", tmp / "guide.safetensors")
            save_file(_contiguous(guide), tmp / "guide.safetensors")
        tensors, meta = ({}, None) if optimizer is None else _split_optimizer(optimizer.state_dict())
        for k, v in (rng or {}).items():
            tensors[f"rng.{k}"] = v.contiguous().cpu()
        faults.hit("checkpoint.train_state", tmp / "train_state.safetensors")
        save_file(tensors, tmp / "train_state.safetensors")
        faults.hit("checkpoint.train_state_json", tmp / "train_state.json")
        write_json_atomic(tmp / "train_state.json", {"step": step, "optimizer": meta, **(train_state or {})})
        faults.hit("checkpoint.config", tmp / "config.json")
        write_json_atomic(tmp / "config.json", {"format_version": FORMAT_VERSION, "step": step, **config})
        faults.hit("checkpoint.manifest", tmp / MANIFEST)
        write_manifest(tmp)
        _fsync_dir(tmp)
        if final.exists():  # the same step again (e.g. after a fallback): move the old one out first
            _discard(root, final)
        faults.hit("checkpoint.rename", final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    faults.hit("checkpoint.latest", root / "latest")
    atomic_write(root / "latest", name + "\n")
    _prune(root, keep, name)
    return final


def _discard(root: Path, folder: Path) -> None:
    """Rename ``folder`` out of the step-* namespace, then delete it."""
    trash = Path(tempfile.mkdtemp(dir=root, prefix=".trash-"))
    os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def step_dirs(root: Path) -> list[Path]:
    """The ``step-NNNNNNNN`` folders of a checkpoints folder, oldest first (temporary, damaged
    and trashed folders excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def _prune(root: Path, keep: int, current: str) -> None:
    done = step_dirs(root)
    for p in done[:-keep] if keep > 0 else []:
        if p.name != current:
            faults.hit("checkpoint.prune", p)
            _discard(root, p)
    for p in list(root.glob("step-*.tmp-*")) + list(root.glob(".trash-*")):  # leftovers of a crash
        shutil.rmtree(p, ignore_errors=True)


def checkpoints_root(path) -> Path:
    p = Path(path)
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def run_has_checkpoints(run_dir) -> bool:
    """True when ``run_dir`` already holds a training run's checkpoints (any step folder, intact
    or not, or a ``latest`` pointer)."""
    root = Path(run_dir) / "checkpoints"
    return bool(step_dirs(root)) or (root / "latest").exists()


def find_checkpoint(path) -> Path:
    """Resolve a run directory, a ``checkpoints`` directory or a checkpoint directory to the
    checkpoint ``latest`` names (else the newest step folder). Does not verify it."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {p}")
    if (p / "config.json").is_file():
        return p
    root = checkpoints_root(p)
    latest = root / "latest"
    if latest.is_file():
        cand = root / latest.read_text().strip()
        if (cand / "config.json").is_file():
            return cand
    done = [q for q in step_dirs(root) if (q / "config.json").is_file()]
    if not done:
        raise CheckpointError(f"{p} holds no checkpoint (expected {p}/checkpoints/step-*/)")
    return done[-1]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged: {e}") from e


def _load_tensors(path: Path) -> dict:
    try:
        return load_file(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing") from e
    except (SafetensorError, OSError, ValueError) as e:  # truncation, bad header
        raise CheckpointError(f"{path} is damaged: {e}") from e


def verify_checkpoint(ckpt_dir) -> None:
    """Raise ``CheckpointError`` naming the first file that fails: against manifest.json (size,
    then sha256) when there is one; otherwise (checkpoints written before manifests) every
    JSON and safetensors file must parse."""
    ckpt = Path(ckpt_dir)
    mpath = ckpt / MANIFEST
    if mpath.exists():
        files = _read_json(mpath).get("files")
        if not isinstance(files, dict) or "config.json" not in files:
            raise CheckpointError(f"{mpath} is damaged: no file list")
        for name, want in files.items():
            f = ckpt / name
            if not f.is_file():
                raise CheckpointError(f"{f} is missing (listed in {mpath.name})")
            if f.stat().st_size != want.get("size"):
                raise CheckpointError(f"{f} is damaged: {f.stat().st_size} bytes, the manifest says {want.get('size')}")
            if file_sha256(f) != want.get("sha256"):
                raise CheckpointError(f"{f} is damaged: its sha256 differs from the manifest's")
        return
    for name in ("config.json", "model.safetensors", "ema.safetensors"):
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt / name} is missing")
    for f in sorted(ckpt.iterdir()):
        if f.suffix == ".json":
            _read_json(f)
        elif f.suffix == ".safetensors":
            _load_tensors(f)


def _aside(folder: Path) -> Path:
    """Rename a damaged step folder to ``<name>.damaged`` (``.damaged-2``, ... if taken)."""
    target, k = folder.with_name(folder.name + ".damaged"), 1
    while target.exists():
        k += 1
        target = folder.with_name(f"{folder.name}.damaged-{k}")
    os.rename(folder, target)
    return target


def resume_checkpoint(run_dir, strict: bool = False, log=None) -> Path | None:
    """The newest intact checkpoint of a run, for ``--resume``; None when the run has none yet.

    Damaged checkpoints newer than it are renamed aside (``step-N.damaged``) with one line each
    on ``log`` (default stderr) saying which and why; with ``strict`` the first damaged one
    raises instead. A run whose every checkpoint is damaged raises (nothing is deleted)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    root = Path(run_dir) / "checkpoints"
    cands = step_dirs(root)
    if not cands:
        return None
    skipped = []
    for ck in reversed(cands):
        try:
            verify_checkpoint(ck)
            _check_format(_read_json(ck / "config.json"), ck)
        except CheckpointError as e:
            if strict:
                raise CheckpointError(f"cannot resume from {ck}: {e}",
                                      hint="resume without strict_resume to fall back to the newest intact checkpoint") from e
            moved = _aside(ck)
            skipped.append(moved)
            log(f"resume: skipped damaged checkpoint {ck.name} ({e}); renamed it to {moved.name}")
            continue
        if skipped:
            atomic_write(root / "latest", ck.name + "\n")
        return ck
    raise CheckpointError(f"{root} holds no intact checkpoint (all renamed aside as *.damaged)",
                          hint="start a new run (overwrite), or restore a checkpoint")


def _check_format(cfg: dict, ckpt: Path) -> None:
    v = cfg.get("format_version")
    if v not in READABLE_FORMATS:
        raise CheckpointError(f"{ckpt / 'config.json'}: checkpoint format {v}, this diffusionlab reads "
                              f"{', '.join(map(str, READABLE_FORMATS))}")


# format 1's GaussianDiffusion config -> DiffusionConfig field names
_FORMAT1_DDPM_RENAMES = {"offset_noise_strength": "offset_noise", "ddim_sampling_eta": "ddim_eta",
                         "sampling_timesteps": "sampling_steps"}


def migrate_config(cfg: dict) -> dict:
    """A config.json body of any readable format as format 3 (``migrated_from`` names the
    format it was written in). Format 3 records ``sampling`` (sampler, steps, guidance) for
    every run, and a text model's encoder fingerprint."""
    v = cfg.get("format_version")
    if v == 1:
        cfg = _migrate_1_to_2(cfg)
    if cfg.get("format_version") == 2:
        cfg = _migrate_2_to_3(cfg, v)
    return cfg


FORMAT2_OWN_SAMPLER = ("edm", "ncsn")  # the processes whose own sampler won over the record in format 2


def _migrate_2_to_3(cfg: dict, written: int) -> dict:
    """Format 2 recorded ``sampling`` for conditional runs only, and a process with a sampler of
    its own (EDM heun, NCSN annealed Langevin) never applied the recorded sampler and steps (it
    applied its own first): they are dropped there, so the model samples as it did."""
    sampling = dict(cfg.get("sampling") or {})
    if cfg["diffusion"].get("process", "ddpm") in FORMAT2_OWN_SAMPLER:
        sampling.pop("sampler", None)
        sampling.pop("steps", None)
    return {**cfg, "format_version": 3, "migrated_from": cfg.get("migrated_from", written), "sampling": sampling}


def _migrate_1_to_2(cfg: dict) -> dict:
    """A format-1 config.json body (``model: {type, config}``, the front-end's own ``diffusion``
    dict with ``image_size`` inside) as format 2 (``network``, a ``DiffusionConfig`` dict,
    ``image_size``). Checkpoints from before processes existed (no ``process``) are ddpm."""
    from .processes import DiffusionConfig

    names = set(DiffusionConfig.__dataclass_fields__)
    d = dict(cfg["diffusion"])
    image_size = d.pop("image_size")
    d.setdefault("process", "ddpm")
    if d["process"] == "ddpm":
        d = {_FORMAT1_DDPM_RENAMES.get(k, k): v for k, v in d.items()}
        d["schedule_kwargs"] = d.get("schedule_kwargs") or None
    diffusion = {k: v for k, v in d.items() if k in names and v is not None}
    train = dict(cfg.get("train") or {})
    if train:
        train["diffusion"] = {"process": "ddpm", **train.get("diffusion", {})}
    out = {k: v for k, v in cfg.items() if k not in ("model", "diffusion", "train")}
    out.update(format_version=2, migrated_from=1, network={"arch": cfg["model"]["type"], "config": cfg["model"]["config"]},
               diffusion=diffusion, image_size=list(image_size), train=train)
    return out


def content_hash(path) -> str:
    """The content hash of a checkpoint (run dir, checkpoints dir or step dir; the step ``latest``
    names): the sha256 of its manifest.json, which holds the size and sha256 of every file. What a
    latent model records of its autoencoder and a LoRA adapter of its base."""
    ckpt = find_checkpoint(path)
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{ckpt} has no {MANIFEST}: not a complete checkpoint")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def read_config(ckpt_dir) -> dict:
    """A checkpoint's config.json, as format 2 (older formats migrated)."""
    ckpt_dir = find_checkpoint(ckpt_dir)
    cfg = _read_json(ckpt_dir / "config.json")
    _check_format(cfg, ckpt_dir)
    try:
        return migrate_config(cfg)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{ckpt_dir / 'config.json'} is damaged: format {cfg.get('format_version')} "
                              f"without {e}") from e


def load_checkpoint(path) -> dict:
    """Everything a resume needs: config, weights, EMA weights, optimizer state, RNG states, and
    the guide snapshot (None when the checkpoint has none). Verified first (``verify_checkpoint``)."""
    ckpt = find_checkpoint(path)
    verify_checkpoint(ckpt)
    cfg = read_config(ckpt)
    model_sd = _load_tensors(ckpt / "model.safetensors")
    ema_sd = _load_tensors(ckpt / "ema.safetensors")
    guide_sd = _load_tensors(ckpt / "guide.safetensors") if (ckpt / "guide.safetensors").exists() else None
    tensors = _load_tensors(ckpt / "train_state.safetensors") if (ckpt / "train_state.safetensors").exists() else {}
    state = _read_json(ckpt / "train_state.json") if (ckpt / "train_state.json").exists() else {}
    opt = _join_optimizer(tensors, state["optimizer"]) if state.get("optimizer") else None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return dict(path=ckpt, config=cfg, model=model_sd, ema=ema_sd, guide=guide_sd, optimizer=opt,
                train_state=state, rng=rng)
