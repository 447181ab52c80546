"""``ContinuousDiffusion``: the seed API's front-end (``DiffusionModel``) for the continuous-time
processes of the registry (``processes.PROCESSES``):

    vp, subvp, ve   Song et al. 2021 SDEs (sde.py), network on the SDE's x_t and 999 t
    edm             Karras et al. 2022 preconditioning, log-normal training sigmas
    ncsn            Song & Ermon 2019/2020 noise-conditional score network on a geometric ladder

``ddpm`` is the discrete process (``GaussianDiffusion``). All of them sample through the same
sigma-space samplers; what differs between them is their registry entry.
"""
from __future__ import annotations

from torch import nn

from .diffusion import DiffusionModel
from .processes import DiffusionConfig


class ContinuousDiffusion(DiffusionModel):
    """A network plus a continuous process: ``ContinuousDiffusion(net, image_size=32, process="edm",
    sigma_data=0.5, ...)`` with any ``DiffusionConfig`` field of that process as a keyword; fields
    left None take the process's defaults (``processes.fill``). ``objective`` (eps | x0 | v | score;
    default v as in ``GaussianDiffusion``) applies to the SDE processes; EDM and NCSN have their own
    parameterizations. ``sampling_steps`` (default 50) is the seed API's ``sample()`` default where
    the process has no sampler of its own (EDM: heun 18; NCSN: annealed Langevin over its ladder)."""

    def __init__(self, model: nn.Module, *, image_size, process: str = "vp", sampling_steps: int = 50, **fields):
        super().__init__(model, image_size, DiffusionConfig(process=process, sampling_steps=sampling_steps, **fields))
