"""Rebuild a model from any checkpoint the project writes: ``load_denoiser`` / ``load_diffusion``."""
from __future__ import annotations

import torch

from .continuous import ContinuousDiffusion
from .diffusion import GaussianDiffusion
from .nn.unet import Unet
from .checkpoint import CheckpointError, load_checkpoint

MODEL_TYPES = {"unet": Unet}


def _build_net(cfg: dict) -> torch.nn.Module:
    spec = cfg.get("model") or {}
    kind = spec.get("type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"checkpoint model type {kind!r} is unknown; known: {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[kind](**spec.get("config", {}))


WEIGHTS = ("ema", "model", "guide")


def load_diffusion(path, use_ema: bool = True, device=None, weights: str | None = None
                   ) -> GaussianDiffusion | ContinuousDiffusion:
    """The checkpoint's model and process with its (EMA by default) weights, in eval mode:
    ``GaussianDiffusion`` for ddpm (and for checkpoints written before processes existed),
    ``ContinuousDiffusion`` for vp, subvp, ve, edm and ncsn. ``weights`` picks the set
    explicitly: "ema", "model" (the raw weights) or "guide" (the autoguidance snapshot the
    trainer writes with ``guide_at``); None means "ema" if use_ema else "model"."""
    weights = weights or ("ema" if use_ema else "model")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    ck = load_checkpoint(path)
    cfg = ck["config"]
    if ck[weights] is None:
        raise CheckpointError(f"{ck['path']} holds no guide snapshot (train with --guide-at, e.g. 0.3, "
                              "or guide with another checkpoint: --guide PATH)")
    net = _build_net(cfg)
    try:
        net.load_state_dict(ck[weights])
    except RuntimeError as e:
        raise CheckpointError(f"weights in {ck['path']} do not fit its config: {e}") from e
    d = dict(cfg["diffusion"])
    image_size = d.pop("image_size")
    if d.get("process", "ddpm") != "ddpm":
        try:
            diffusion = ContinuousDiffusion.from_config(net, tuple(image_size), d)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{ck['path']}: unusable diffusion config: {e}") from e
    else:
        diffusion = GaussianDiffusion(net, image_size=tuple(image_size), timesteps=d["timesteps"],
                                      sampling_timesteps=d["sampling_timesteps"], objective=d["objective"],
                                      beta_schedule=d["beta_schedule"], loss_type=d["loss_type"],
                                      min_snr_gamma=d["min_snr_gamma"], offset_noise_strength=d["offset_noise_strength"],
                                      zero_terminal_snr=d["zero_terminal_snr"], ddim_sampling_eta=d["ddim_sampling_eta"],
                                      schedule_kwargs=d.get("schedule_kwargs"), sigma_data=d.get("sigma_data"),
                                      loss_kind=d.get("loss_kind", "simple"), vlb_weight=d.get("vlb_weight", 0.001),
                                      t_sampling=d.get("t_sampling", "uniform"))
    diffusion.checkpoint_path = str(ck["path"])
    diffusion.checkpoint_step = cfg.get("guide_step") if weights == "guide" else cfg.get("step")
    return diffusion.to(device or "cpu").eval()


def load_denoiser(path, use_ema: bool = True, device=None, autocast_dtype=None, weights: str | None = None):
    """Any checkpoint (run dir, checkpoints dir or step dir) as a sigma-space denoiser of its
    process (``DiscreteDenoiser``, ``SDEDenoiser``, ``EDMDenoiser`` or ``NCSNDenoiser``), with
    ``image_shape`` set."""
    diffusion = load_diffusion(path, use_ema, device, weights)
    den = diffusion.denoiser_for(diffusion.model, autocast_dtype)
    den.image_shape = (diffusion.channels, *diffusion.image_size)
    return den.eval()
