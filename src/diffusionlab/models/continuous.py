"""``ContinuousDiffusion``: the continuous-time processes behind the methods the trainer calls
on ``GaussianDiffusion`` (``loss``, ``loss_fn``, ``sample``, ``denoiser_for``, ``config``).

    vp, subvp, ve   Song et al. 2021 SDEs (sde.py), network on the SDE's x_t and 999 t
    edm             Karras et al. 2022 preconditioning, log-normal training sigmas
    ncsn            Song & Ermon 2019/2020 noise-conditional score network on a geometric ladder

``ddpm`` is the discrete process (``GaussianDiffusion``). All of them sample through the same
sigma-space samplers.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from ..core.denoiser import EDMDenoiser, NCSNDenoiser, SDEDenoiser, ncsn_levels_for
from .diffusion import DiffusionModel
from ..core.losses import EDMLoss, NCSNLoss, SDELoss
from .processes import PROCESS_DEFAULTS, PROCESSES, SDE_PROCESSES, DiffusionConfig, continuous_params, validate  # noqa: F401
from ..core.sde import SDES

PROCESS_PARAMS = PROCESS_DEFAULTS  # the continuous processes and their parameters (processes.py); old name


def _build_sde(process: str, p: dict):
    if process == "ve":
        return SDES["ve"](p["sigma_min"], p["sigma_max"], p["eps_t"])
    return SDES[process](p["beta_min"], p["beta_max"], p["eps_t"])


class ContinuousDiffusion(DiffusionModel):
    """A network plus a continuous process: training loss and sampling. Images enter
    ``forward`` in [0, 1] and ``sample`` returns [0, 1], like ``GaussianDiffusion``.

    ``objective`` (eps | x0 | v | score; default v as in ``GaussianDiffusion``) and
    ``likelihood_weighting`` apply to the SDE processes;
    EDM and NCSN have their own fixed parameterizations. Process parameters left None take the
    defaults of ``processes.PROCESS_DEFAULTS``; ``process_config`` is the whole setting as a
    ``DiffusionConfig`` (what checkpoints store)."""

    kind = "continuous_diffusion"

    def __init__(self, model: nn.Module, *, image_size, process: str = "vp", objective: str | None = None,
                 loss_type: str = "l2", likelihood_weighting: bool = False, sampling_steps: int = 50, **params):
        if process not in PROCESS_DEFAULTS:
            raise ValueError(f"unknown continuous process {process!r}; choose from {sorted(PROCESS_DEFAULTS)}")
        unknown = set(params) - set(PROCESS_DEFAULTS[process])
        if unknown:
            raise ValueError(f"process {process!r} takes {sorted(PROCESS_DEFAULTS[process])}, not {sorted(unknown)}")
        is_sde = process in SDE_PROCESSES
        given = validate(DiffusionConfig(process=process, objective=objective or "v", loss_type=loss_type,  # the one check
                                         likelihood_weighting=likelihood_weighting, sampling_steps=sampling_steps,
                                         **params))
        super().__init__(model, image_size)
        self.process = process
        self.sampling_steps = sampling_steps
        p = continuous_params(given)
        if process == "ncsn" and p["ncsn_levels"] is None:
            dim = self.channels * self.image_size[0] * self.image_size[1]
            p["ncsn_levels"] = ncsn_levels_for(dim, p["sigma_min"], p["sigma_max"])
        self.params = p
        if is_sde:
            self.sde = _build_sde(process, p)
            self.objective = objective or "v"        # as GaussianDiffusion; "eps" is score_sde's
            self.loss_fn = SDELoss(self.sde, self.objective, loss_type, likelihood_weighting)
        elif process == "edm":
            self.objective = None
            self.loss_fn = EDMLoss(p["sigma_data"], p["p_mean"], p["p_std"], loss_type)
        else:
            self.objective = None
        self.denoiser = self.denoiser_for(model)
        if process == "ncsn":
            self.loss_fn = NCSNLoss(self.denoiser.ladder, loss_type)
        self.process_config = dataclasses.replace(given, **p)  # the defaults filled in (ncsn: its ladder length)

    @classmethod
    def from_config(cls, model: nn.Module, image_size, d: dict, sampling_steps: int = 50) -> "ContinuousDiffusion":
        """From a ``DiffusionConfig`` as a dict: only the fields the process takes are read."""
        names = DiffusionConfig.__dataclass_fields__
        cfg = validate(DiffusionConfig(**{k: v for k, v in d.items() if k in names and v is not None}))
        sde = cfg.process in SDE_PROCESSES
        return cls(model, image_size=image_size, process=cfg.process, objective=cfg.objective if sde else None,
                   loss_type=cfg.loss_type, likelihood_weighting=cfg.likelihood_weighting if sde else False,
                   sampling_steps=d.get("sampling_steps", sampling_steps), **continuous_params(cfg))

    def denoiser_for(self, net: nn.Module, autocast_dtype=None):
        """``net`` (e.g. the EMA copy) wrapped as this process's sigma-space denoiser."""
        p = self.params
        if self.process in SDE_PROCESSES:
            return SDEDenoiser(net, self.sde, self.objective, autocast_dtype)
        if self.process == "edm":
            return EDMDenoiser(net, p["sigma_data"], p["sigma_min"], p["sigma_max"], autocast_dtype)
        return NCSNDenoiser(net, p["sigma_min"], p["sigma_max"], p["ncsn_levels"], autocast_dtype)

    def sampling_defaults(self, steps):
        """The model's own sampler and steps (EDM: heun 18, NCSN: annealed Langevin over its
        ladder) when registered, else DDIM with ``sampling_steps``."""
        from ..core.samplers import SAMPLERS

        info = self.denoiser.info
        sampler = info.default_sampler if info.default_sampler in SAMPLERS else "ddim"
        return sampler, steps or info.default_steps or self.sampling_steps, {}

    def default_sampler(self) -> str:
        return self.sampling_defaults(None)[0]
