"""What the ``Trainer`` builds before its loop: the run's config (from a ``TrainConfig``, the seed
tutorials' keywords or a resumed checkpoint), the initial network and process, and the run's
provenance (git commit, package versions) for run.json."""
from __future__ import annotations

import contextlib
import dataclasses
import platform
import subprocess
from pathlib import Path

import torch

from ..errors import UserError
from ..models.checkpoint import CheckpointError, find_checkpoint, read_config, resume_checkpoint, run_has_checkpoints
from ..models.loading import build_diffusion as build_process
from ..models.processes import validate
from ..nn import build_network, network_config
from .config import TrainConfig, default_model

# the seed tutorials' Trainer keywords -> TrainConfig fields
SEED_TRAINER_KWARGS = {"train_batch_size": "batch_size", "train_lr": "lr", "train_num_steps": "max_steps",
                       "gradient_accumulate_every": "grad_accum", "ema_decay": "ema_decay", "results_folder": "out_dir",
                       "num_samples": "n_grid", "augment_horizontal_flip": "hflip"}


# how a run is executed, not what it computes: a resumed run takes them from the new invocation
# (resume on another machine, with or without compilation or gradient checkpointing)
RUNTIME_FIELDS = ("compile", "grad_checkpoint", "device", "num_threads", "on_nan", "on_write_error", "log_to")


class RunExistsError(CheckpointError):
    """The output folder already holds a run and neither resume nor overwrite was asked for."""


def run_config(diffusion, folder, config: TrainConfig | None, seed_kw: dict, resume: bool, overwrite: bool,
               strict_resume: bool) -> tuple[TrainConfig, Path | None]:
    """(the run's config, the checkpoint to resume from or None). ``seed_kw``: TrainConfig fields
    given as keywords; a resumed checkpoint's config wins, but its budgets may grow. An output
    folder that holds a run is refused unless resumed or overwritten (before anything is written)."""
    if folder is not None:
        seed_kw["data"] = str(folder)
    if config is None:
        config = _config_from_diffusion(diffusion, **seed_kw) if diffusion is not None else TrainConfig(**seed_kw)
    elif seed_kw:
        config = dataclasses.replace(config, **seed_kw)
    if resume and overwrite:
        raise UserError("resume continues the run in the output folder, overwrite replaces it: choose one")
    if resume:  # the newest intact checkpoint; damaged newer ones are renamed aside (checkpoint.py)
        resume_from = resume_checkpoint(config.out_dir, strict=strict_resume)
        if resume_from is not None:
            stored = TrainConfig.from_dict(read_config(resume_from)["train"])
            config = dataclasses.replace(stored, max_steps=config.max_steps, time_budget=config.time_budget,
                                         out_dir=config.out_dir, progress=config.progress,
                                         **{k: getattr(config, k) for k in RUNTIME_FIELDS})
        return config, resume_from
    if run_has_checkpoints(config.out_dir) and not overwrite:
        raise RunExistsError(
            f"{config.out_dir} already holds a training run ({find_checkpoint(config.out_dir).name}); "
            "nothing was written", hint="resume that run, or overwrite it")
    return config, None


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("diffusionlab", "torch", "numpy", "safetensors", "einops", "pillow", "mlxtend", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):  # not installed: leave it out
            out[p] = version(p)
    return out


def initial_network(cfg: TrainConfig):
    """The network of the config (``nn.build_network``) with initial weights that depend on the
    seed only."""
    with torch.random.fork_rng(devices=[]):  # weights depend on the seed only, not on prior RNG use
        torch.manual_seed(cfg.seed)
        return build_network(cfg.arch, cfg.model)


def build_diffusion(cfg: TrainConfig, image_size: int | None = None, net=None):
    """The network (``nn.NETWORKS[cfg.arch]``) and its process from the config (one builder,
    ``loading.build_diffusion``); the initial weights depend on the seed only. ``image_size``:
    the side the network models (a latent run's latent side; default the images'). ``net``: a
    network to start from instead (a fine-tuning run's base)."""
    return build_process(initial_network(cfg) if net is None else net, image_size or cfg.image_size,
                         validate(cfg.diffusion), cfg.sample_steps or 50)


def _config_from_diffusion(diffusion, **fields) -> TrainConfig:
    """The TrainConfig of a seed-API model handed to the Trainer: its network's and process's configs."""
    arch = getattr(diffusion.model, "arch", "unet")
    mc = getattr(diffusion.model, "config", None)
    model = network_config(arch, mc) if mc else default_model()
    d = diffusion.process_config
    return TrainConfig(arch=arch, model=model, diffusion=d, image_size=diffusion.image_size[0], **fields)


