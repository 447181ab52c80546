"""Rebuild a model from any checkpoint the project writes (``load_denoiser`` / ``load_diffusion``),
and the one builder of a process around a network (``build_diffusion``).

A checkpoint's config.json (format 2, ``checkpoint_config``) holds only dataclass dicts:

    {"format_version": 2, "step": N, "kind": "discrete_diffusion" | "continuous_diffusion",
     "network": {"arch": "unet", "config": <UnetConfig>}, "diffusion": <DiffusionConfig>,
     "image_size": [H, W], "train": <TrainConfig>, "guide_step": S (with an autoguidance snapshot)}

Format 1 (written before the configs were unified) is migrated on load (``checkpoint.migrate_config``).
"""
from __future__ import annotations

import dataclasses

from .checkpoint import CheckpointError, load_checkpoint
from .continuous import ContinuousDiffusion
from .diffusion import GaussianDiffusion
from ..nn import NETWORKS, build_network
from .processes import SDE_PROCESSES, DiffusionConfig, continuous_params, validate

WEIGHTS = ("ema", "model", "guide")
MODEL_TYPES = NETWORKS  # the older name of the registry


def build_diffusion(net, image_size, d: DiffusionConfig, sample_steps: int = 50):
    """The process ``d`` around ``net``: ``GaussianDiffusion`` for ddpm, else ``ContinuousDiffusion``.
    ``d.sampling_steps`` (else ``sample_steps``) is the seed API's default number of sampling steps."""
    validate(d)
    steps = d.sampling_steps or sample_steps
    if d.process == "ddpm":
        return GaussianDiffusion(net, image_size=image_size, timesteps=d.timesteps, objective=d.objective,
                                 beta_schedule=d.beta_schedule, loss_type=d.loss_type, min_snr_gamma=d.min_snr_gamma,
                                 offset_noise_strength=d.offset_noise, zero_terminal_snr=d.zero_terminal_snr,
                                 sampling_timesteps=min(steps, d.timesteps), sigma_data=d.sigma_data,
                                 loss_kind=d.loss_kind, vlb_weight=d.vlb_weight, t_sampling=d.t_sampling,
                                 schedule_kwargs=d.schedule_kwargs, ddim_sampling_eta=d.ddim_eta)
    sde = d.process in SDE_PROCESSES
    return ContinuousDiffusion(net, image_size=image_size, process=d.process, objective=d.objective if sde else None,
                               loss_type=d.loss_type, likelihood_weighting=d.likelihood_weighting if sde else False,
                               sampling_steps=steps, **continuous_params(d))


def checkpoint_config(diffusion, arch: str, network_config: dict, train: dict) -> dict:
    """The format-2 config.json body of a model (module docstring)."""
    kind = "discrete_diffusion" if diffusion.process_config.process == "ddpm" else "continuous_diffusion"
    return {"kind": kind, "network": {"arch": arch, "config": network_config},
            "diffusion": dataclasses.asdict(diffusion.process_config), "image_size": list(diffusion.image_size),
            "train": train}


def load_diffusion(path, use_ema: bool = True, device=None, weights: str | None = None
                   ) -> GaussianDiffusion | ContinuousDiffusion:
    """The checkpoint's model and process with its (EMA by default) weights, in eval mode:
    ``GaussianDiffusion`` for ddpm, ``ContinuousDiffusion`` for vp, subvp, ve, edm and ncsn.
    ``weights`` picks the set explicitly: "ema", "model" (the raw weights) or "guide" (the
    autoguidance snapshot the trainer writes with ``guide_at``); None means "ema" if use_ema else "model"."""
    weights = weights or ("ema" if use_ema else "model")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    ck = load_checkpoint(path)
    cfg, where = ck["config"], ck["path"] / "config.json"
    if ck[weights] is None:
        raise CheckpointError(f"{ck['path']} holds no guide snapshot (train with --guide-at, e.g. 0.3, "
                              "or guide with another checkpoint: --guide PATH)")
    try:
        net = build_network(cfg["network"]["arch"], cfg["network"]["config"])
        diffusion = build_diffusion(net, tuple(cfg["image_size"]), DiffusionConfig.from_dict(cfg["diffusion"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: unusable model config: {e}") from e
    try:
        net.load_state_dict(ck[weights])
    except RuntimeError as e:
        raise CheckpointError(f"weights in {ck['path']} do not fit its config: {e}") from e
    diffusion.checkpoint_path = str(ck["path"])
    diffusion.class_names = (cfg.get("conditioning") or {}).get("class_names")
    lowres = (cfg.get("conditioning") or {}).get("lowres")
    diffusion.lowres = (int(lowres), int(lowres)) if lowres else None
    diffusion.default_guidance = (cfg.get("sampling") or {}).get("guidance")
    diffusion.recorded_sampling = dict(cfg.get("sampling") or {})
    diffusion.checkpoint_step = cfg.get("guide_step") if weights == "guide" else cfg.get("step")
    return diffusion.to(device or "cpu").eval()


def load_denoiser(path, use_ema: bool = True, device=None, autocast_dtype=None, weights: str | None = None):
    """Any checkpoint (run dir, checkpoints dir or step dir) as a sigma-space denoiser of its
    process (``DiscreteDenoiser``, ``SDEDenoiser``, ``EDMDenoiser`` or ``NCSNDenoiser``), with
    ``info.image_shape`` set."""
    diffusion = load_diffusion(path, use_ema, device, weights)
    den = diffusion.denoiser_for(diffusion.model, autocast_dtype)
    den.image_shape = (diffusion.channels, *diffusion.image_size)
    den.class_names, den.default_guidance = diffusion.class_names, diffusion.default_guidance
    den.lowres = diffusion.lowres
    den.recorded_sampling = {k: v for k, v in diffusion.recorded_sampling.items() if k in ("sampler", "steps")}
    return den.eval()
