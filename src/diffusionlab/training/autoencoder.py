"""Latent diffusion's first stage, trained by the project's one trainer: a KL autoencoder
(``nn.autoencoder.Autoencoder``) is a ``TrainConfig`` with ``autoencoder`` set (an
``AutoencoderObjective``) and ``arch`` "autoencoder"; the ``Trainer`` builds the network from
``TrainConfig.model`` (an ``AutoencoderConfig``), trains it with ``AutoencoderLoss`` (same loop,
flags, EMA, time budget, atomic checkpoints, exact resume, validation loss on the held-out split)
and writes the ordinary checkpoint, whose config.json is

    {"format_version": 3, "step": N, "kind": "autoencoder",
     "network": {"arch": "autoencoder", "config": <AutoencoderConfig>}, "image_size": [H, W],
     "autoencoder": {"beta", "loss", "latent_shape", "latent_shift": [per channel],
                     "latent_scale": [per channel], "stats_images": n}, "train": <TrainConfig>}

The latent shift and scale are measured on the training images with the EMA weights at every
checkpoint (``latent_stats``): per channel, the mean and standard deviation of latents sampled
from q(z | x) (SD3 / Flux shift and scale; SD1's 0.18215 is one scale for all channels).
``models.latent.LatentCodec`` applies them. ``train_autoencoder`` is the short form (and the
CLI's ``train-autoencoder``); afterwards it measures held-out PSNR / SSIM and writes the
reconstruction grid (originals above, reconstructions below).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import UserError
from ..nn.autoencoder import AutoencoderConfig
from .autoencoder_loss import KIND, AutoencoderLoss, autoencoder_run, checkpoint_record, latent_stats  # noqa: F401
from .config import AutoencoderObjective, TrainConfig

RECONSTRUCTION_GRID = 16             # held-out images in reconstructions.png


# ------------------------------------------------------------------ the short form
def autoencoder_config(data: str = "mnist", out: str = "runs/ae", f: int = 2, latent_channels: int = 4,
                       dim: int = 32, steps: int | None = None, time_budget: float | None = None,
                       image_size: int = 32, channels: int = 1, batch_size: int = 64, lr: float = 1e-3,
                       beta: float = 1e-6, loss: str = "l1", seed: int = 0, **overrides) -> TrainConfig:
    """The ``TrainConfig`` of ``train_autoencoder``: AdamW at ``lr`` with 100 warm-up steps and
    a cosine decay, gradient clipping 1, fp32, EMA as every run, validation every 100 steps."""
    cfg = TrainConfig(data=data, image_size=image_size, arch=KIND,
                      model=AutoencoderConfig(channels=channels, latent_channels=latent_channels, f=f, dim=dim),
                      autoencoder=AutoencoderObjective(beta, loss), batch_size=batch_size, lr=lr, warmup_steps=100,
                      max_steps=steps, time_budget=time_budget, p_uncond=0.0, precision="fp32", seed=seed,
                      out_dir=str(out), log_every=10, val_every=100, sample_every=0, eval_every=0,
                      checkpoint_every=500, progress=False)
    return dataclasses.replace(cfg, **overrides)


def train_autoencoder(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the autoencoder run ``cfg`` (``autoencoder_config``) with the ``Trainer``, then
    measure held-out PSNR / SSIM of the EMA weights (``reconstruction_metrics``) and write
    ``reconstructions.png``. Returns (and writes into run.json's summary) the trainer's summary
    with steps, seconds, psnr, ssim, the latent shape and statistics."""
    from ..data.datasets import load_image_sets
    from .trainer import Trainer

    if cfg.max_steps is None and cfg.time_budget is None:
        raise UserError("give steps or a time budget", param="steps")
    trainer = Trainer(config=cfg, resume=resume, overwrite=overwrite)
    summary = trainer.train()
    if not trainer.world.main:  # the held-out measurements and files: rank 0's
        return summary
    cfg = trainer.cfg
    codec = load_codec(summary["checkpoint"])
    _, val = load_image_sets(cfg.data, cfg.image_size, cfg.model.channels, cfg.val_fraction, cfg.seed,
                             image_column=cfg.image_column)
    metrics = reconstruction_metrics(codec, val.images)
    save_reconstructions(codec, val.images[:RECONSTRUCTION_GRID], Path(cfg.out_dir) / "reconstructions.png")
    result = {**summary, **metrics, "latent_shape": list(codec.latent_shape), "latent_shift": codec.shift.tolist(),
              "latent_scale": codec.scale.tolist(), "seconds": round(trainer.elapsed, 1)}
    trainer.log({"step": trainer.step, **{f"heldout_{k}": v for k, v in metrics.items()}})
    trainer.write_run_json({"summary": result})
    return result


def load_codec(path):
    from ..models.latent import load_autoencoder

    return load_autoencoder(path)


@torch.no_grad()
def reconstruction_metrics(codec, images: torch.Tensor, batch_size: int = 256) -> dict:
    """Held-out PSNR and SSIM (``evaluation.metrics``) of the posterior mean's reconstruction;
    SSIM is None for images under 11 px a side (its 11 x 11 Gaussian window does not fit).
    Measured batch by batch, so a lazily decoded set (``data.hf.LazyImages``) is never whole in
    memory."""
    from ..evaluation.metrics import psnr, ssim

    fits = min(images.shape[-2:]) >= 11
    p, s = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        rec = codec.reconstruct(x)
        p.append(psnr(rec, x))
        if fits:
            s.append(ssim(rec, x))
    return {"psnr": float(torch.cat(p).mean()), "ssim": float(torch.cat(s).mean()) if fits else None,
            "n": len(images)}


def save_reconstructions(codec, images: torch.Tensor, path) -> Path:
    """Originals above, reconstructions below (``evaluation.viz.save_grid``)."""
    from ..evaluation.viz import save_grid

    rec = codec.reconstruct(images)
    return save_grid(torch.cat([images, rec.clamp(-1, 1)]), path, nrow=len(images), upscale=2)
