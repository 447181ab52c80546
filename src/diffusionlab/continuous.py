"""``ContinuousDiffusion``: the continuous-time processes behind the methods the trainer calls
on ``GaussianDiffusion`` (``loss``, ``loss_fn``, ``sample``, ``denoiser_for``, ``config``).

    vp, subvp, ve   Song et al. 2021 SDEs (sde.py), network on the SDE's x_t and 999 t
    edm             Karras et al. 2022 preconditioning, log-normal training sigmas
    ncsn            Song & Ermon 2019/2020 noise-conditional score network on a geometric ladder

``ddpm`` is the discrete process (``GaussianDiffusion``). All of them sample through the same
sigma-space samplers.
"""
from __future__ import annotations

from torch import nn

from .denoiser import EDMDenoiser, NCSNDenoiser, SDEDenoiser, ncsn_levels_for
from .diffusion import normalize, sample_images
from .losses import EDMLoss, NCSNLoss, SDELoss
from .sde import SDES

# name -> the parameters that process takes, with their defaults (None: derived, see below)
PROCESS_PARAMS: dict[str, dict] = {
    "vp": dict(beta_min=0.1, beta_max=20.0, eps_t=1e-5),
    "subvp": dict(beta_min=0.1, beta_max=20.0, eps_t=1e-5),
    "ve": dict(sigma_min=0.01, sigma_max=50.0, eps_t=0.0),
    "edm": dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, p_mean=-1.2, p_std=1.2),
    "ncsn": dict(sigma_min=0.01, sigma_max=50.0, ncsn_levels=None),   # None: Technique 2 for the image
}
PROCESSES = ("ddpm", *PROCESS_PARAMS)
SDE_PROCESSES = tuple(SDES)


def _build_sde(process: str, p: dict):
    if process == "ve":
        return SDES["ve"](p["sigma_min"], p["sigma_max"], p["eps_t"])
    return SDES[process](p["beta_min"], p["beta_max"], p["eps_t"])


class ContinuousDiffusion(nn.Module):
    """A network plus a continuous process: training loss and sampling. Images enter
    ``forward`` in [0, 1] and ``sample`` returns [0, 1], like ``GaussianDiffusion``.

    ``objective`` (eps | x0 | v | score; default v as in ``GaussianDiffusion``) and
    ``likelihood_weighting`` apply to the SDE processes;
    EDM and NCSN have their own fixed parameterizations. Process parameters left None take the
    defaults of ``PROCESS_PARAMS``."""

    kind = "continuous_diffusion"

    def __init__(self, model: nn.Module, *, image_size, process: str = "vp", objective: str | None = None,
                 loss_type: str = "l2", likelihood_weighting: bool = False, sampling_steps: int = 50, **params):
        super().__init__()
        if process not in PROCESS_PARAMS:
            raise ValueError(f"unknown continuous process {process!r}; choose from {sorted(PROCESS_PARAMS)}")
        is_sde = process in SDE_PROCESSES
        if not is_sde and objective is not None:
            raise ValueError(f"process {process!r} has a fixed parameterization; objective applies to vp, subvp, ve")
        if not is_sde and likelihood_weighting:
            raise ValueError("likelihood_weighting applies to the SDE processes (vp, subvp, ve)")
        unknown = set(params) - set(PROCESS_PARAMS[process])
        if unknown:
            raise ValueError(f"process {process!r} takes {sorted(PROCESS_PARAMS[process])}, not {sorted(unknown)}")
        self.model, self.process = model, process
        self.channels = getattr(model, "channels", 3)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.sampling_steps = sampling_steps
        p = {k: (params.get(k) if params.get(k) is not None else v) for k, v in PROCESS_PARAMS[process].items()}
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
        self.config = dict(process=process, image_size=list(self.image_size), objective=self.objective,
                           loss_type=loss_type, likelihood_weighting=likelihood_weighting,
                           sampling_steps=sampling_steps, **p)

    @classmethod
    def from_config(cls, model: nn.Module, image_size, d: dict, sampling_steps: int = 50) -> "ContinuousDiffusion":
        """From a ``DiffusionConfig`` as a dict (or a checkpoint's diffusion config): only the
        fields the process takes are read."""
        process = d["process"]
        params = {k: d.get(k) for k in PROCESS_PARAMS[process]}
        is_sde = process in SDE_PROCESSES
        return cls(model, image_size=image_size, process=process, objective=d.get("objective") if is_sde else None,
                   loss_type=d.get("loss_type", "l2"),
                   likelihood_weighting=bool(d.get("likelihood_weighting")) if is_sde else False,
                   sampling_steps=d.get("sampling_steps", sampling_steps), **params)

    def denoiser_for(self, net: nn.Module, autocast_dtype=None):
        """``net`` (e.g. the EMA copy) wrapped as this process's sigma-space denoiser."""
        p = self.params
        if self.process in SDE_PROCESSES:
            return SDEDenoiser(net, self.sde, self.objective, autocast_dtype)
        if self.process == "edm":
            return EDMDenoiser(net, p["sigma_data"], p["sigma_min"], p["sigma_max"], autocast_dtype)
        return NCSNDenoiser(net, p["sigma_min"], p["sigma_max"], p["ncsn_levels"], autocast_dtype)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def loss(self, x, cond=None, generator=None, autocast=None):
        """Mean training loss for images already in [-1, 1]."""
        return self.loss_fn(self.model, x, cond, generator=generator, autocast=autocast).mean()

    def forward(self, img, cond=None, generator=None):
        if tuple(img.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(img.shape[-2:])}, the model expects {self.image_size}")
        return self.loss(normalize(img), cond, generator)

    def default_sampler(self) -> str:
        """The model's own sampler (EDM: heun, NCSN: annealed_langevin) when registered, else DDIM."""
        from .samplers import SAMPLERS

        name = self.denoiser.info.default_sampler
        return name if name in SAMPLERS else "ddim"

    def sample(self, batch_size: int = 16, cond=None, generator=None, sampler: str | None = None,
               steps: int | None = None, return_all_timesteps: bool = False, autocast_dtype=None, **knobs):
        """Images in [0, 1] (see ``GaussianDiffusion.sample``)."""
        steps = steps or self.denoiser.info.default_steps or self.sampling_steps
        return sample_images(self, self.denoiser, batch_size, sampler or self.default_sampler(), steps, cond,
                             generator, return_all_timesteps, autocast_dtype, **knobs)
