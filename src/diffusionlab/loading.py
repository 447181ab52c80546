"""Rebuild a model from any checkpoint the project writes: ``load_denoiser`` / ``load_diffusion``."""
from __future__ import annotations

import torch

from .denoiser import DiscreteDenoiser
from .diffusion import GaussianDiffusion
from .nn.unet import Unet
from .training.checkpoint import CheckpointError, load_checkpoint

MODEL_TYPES = {"unet": Unet}


def _build_net(cfg: dict) -> torch.nn.Module:
    spec = cfg.get("model") or {}
    kind = spec.get("type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"checkpoint model type {kind!r} is unknown; known: {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[kind](**spec.get("config", {}))


def load_diffusion(path, use_ema: bool = True, device=None) -> GaussianDiffusion:
    """A ``GaussianDiffusion`` with the checkpoint's (EMA by default) weights, in eval mode."""
    ck = load_checkpoint(path)
    cfg = ck["config"]
    net = _build_net(cfg)
    try:
        net.load_state_dict(ck["ema" if use_ema else "model"])
    except RuntimeError as e:
        raise CheckpointError(f"weights in {ck['path']} do not fit its config: {e}") from e
    d = dict(cfg["diffusion"])
    image_size = d.pop("image_size")
    diffusion = GaussianDiffusion(net, image_size=tuple(image_size), timesteps=d["timesteps"],
                                  sampling_timesteps=d["sampling_timesteps"], objective=d["objective"],
                                  beta_schedule=d["beta_schedule"], loss_type=d["loss_type"],
                                  min_snr_gamma=d["min_snr_gamma"], offset_noise_strength=d["offset_noise_strength"],
                                  zero_terminal_snr=d["zero_terminal_snr"], ddim_sampling_eta=d["ddim_sampling_eta"],
                                  schedule_kwargs=d.get("schedule_kwargs"), sigma_data=d.get("sigma_data"))
    diffusion.checkpoint_path = str(ck["path"])
    diffusion.checkpoint_step = cfg.get("step")
    return diffusion.to(device or "cpu").eval()


def load_denoiser(path, use_ema: bool = True, device=None, autocast_dtype=None) -> DiscreteDenoiser:
    """Any checkpoint (run dir, checkpoints dir or step dir) as a sigma-space denoiser."""
    diffusion = load_diffusion(path, use_ema, device)
    den = DiscreteDenoiser(diffusion.model, diffusion.schedule, diffusion.objective, autocast_dtype)
    den.image_shape = (diffusion.channels, *diffusion.image_size)
    return den.eval()
