"""A process is ONE registry entry: ``PROCESSES[name]`` is a ``ProcessSpec`` holding everything
that differs between DDPM, VP, sub-VP, VE, EDM and NCSN - the ``DiffusionConfig`` fields it
reads and its own defaults for them, the objectives it takes, how to build its sigma-space
denoiser around a network and its training loss, and (through its denoiser class) its default
sampling grid, sampler and steps. Everything else derives from the registry: ``PROCESS_FIELDS``
(which field applies to which process, for ``validate`` and the CLI's checks), ``fill`` (the
defaults of fields left None), the checkpoint's ``kind``, the trainer's and the loader's
builders. Adding a process is one entry here plus its tests (docs/ARCHITECTURE.md).

``DiffusionConfig`` is the one typed config of every process (what checkpoints store); a field
set away from its default for a process that does not read it is an error (``validate``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ..core import losses
from ..core.dataclass_io import from_dict
from ..core.denoiser import (DiscreteDenoiser, EDMDenoiser, FlowDenoiser, NCSNDenoiser, PreconditionedDenoiser,
                             SDEDenoiser, ncsn_levels_for)
from ..core.schedules import DiscreteSchedule
from ..core.sde import SDES
from ..errors import UserError

@dataclass
class DiffusionConfig:
    process: str = "ddpm"            # ddpm | vp | subvp | ve | edm | ncsn | flow
    timesteps: int = 1000            # ddpm
    objective: str = "v"             # ddpm: eps | x0 | v; vp, subvp, ve: also score
    beta_schedule: str = "cosine"    # ddpm: see schedules.BETA_SCHEDULES
    loss_type: str = "l2"            # every process: l1 | l2 | huber
    min_snr_gamma: float | None = None  # ddpm, e.g. 5; measured: hurts the 10-minute MNIST demo
    offset_noise: float = 0.0        # ddpm
    zero_terminal_snr: bool = False  # ddpm
    sigma_data: float | None = None  # ddpm: EDM loss weighting (losses.EDMWeighting), None = none; edm: 0.5
    loss_kind: str = "simple"        # ddpm: simple | hybrid (L_simple + vlb_weight L_vlb; learned variance) | vlb
    vlb_weight: float = 0.001        # ddpm, hybrid: lambda (improved DDPM's 0.001)
    t_sampling: str = "uniform"      # ddpm: uniform | importance (improved DDPM, for the vlb loss)
    beta_min: float | None = None    # vp, subvp: beta(t) = beta_min + t (beta_max - beta_min); 0.1
    beta_max: float | None = None    # vp, subvp: 20
    eps_t: float | None = None       # vp, subvp, ve: smallest time in training and sampling; 1e-5 (ve: 0)
    sigma_min: float | None = None   # ve, ncsn: 0.01; edm: 0.002
    sigma_max: float | None = None   # ve, ncsn: 50; edm: 80
    likelihood_weighting: bool = False  # vp, subvp, ve: lambda(t) = g(t)^2 instead of std(t)^2
    p_mean: float | None = None      # edm, flow: ln sigma ~ N(p_mean, p_std^2) in training; edm -1.2, flow 0
    p_std: float | None = None       # edm: 1.2; flow: 1 (SD3's logit-normal t: logit t = ln sigma)
    shift: float | None = None       # flow: resolution shift t' = s t / (1 + (s - 1) t), i.e. sigma' = s sigma; 1
    ncsn_levels: int | None = None   # ncsn ladder length; None: Song & Ermon 2020 Technique 2 for the image
    schedule_kwargs: dict | None = None  # ddpm: extra arguments of the beta schedule (e.g. sigmoid's start/end)
    ddim_eta: float = 0.0            # ddpm: the eta of GaussianDiffusion.sample's DDIM default
    sampling_steps: int | None = None  # every process: steps of the seed API's sample() (None: ddpm all T,
    #                                    the others their own default or 50)
    consistency: bool = False        # every process: a consistency model (training.distill): its denoiser is
    #                                    f(x, sigma) with f(x, sigma_min) = x exactly (denoiser.boundary_coefficients)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        """From a stored dict (``core.dataclass_io.from_dict``)."""
        return from_dict(cls, d)




COMMON_FIELDS = ("process", "loss_type", "sampling_steps", "consistency")  # read by every process


@dataclass(frozen=True)
class ProcessSpec:
    """One process (module docstring). ``denoiser(net, d, autocast_dtype, declared)`` and
    ``loss(d, denoiser)`` take ``d`` with the defaults filled in (``fill``). ``make_denoiser`` is the
    one call of ``denoiser``: it adds a consistency model's boundary (``d.consistency``)."""

    name: str
    summary: str
    fields: tuple                      # the DiffusionConfig fields it reads besides COMMON_FIELDS
    denoiser: Callable                 # (net, d, autocast_dtype, declared) -> PreconditionedDenoiser
    loss: Callable                     # (d, denoiser) -> a losses.DenoisingLoss
    denoiser_class: type               # its default grid / sampler / steps: the class attributes
    defaults: dict = field(default_factory=dict)  # its own values of fields left None
    objectives: tuple = ()             # the objectives it takes (): a fixed parameterization
    kind: str = "continuous_diffusion"  # the checkpoint's "kind" (format 2)

    def make_denoiser(self, net, d: DiffusionConfig, autocast_dtype=None, declared=None) -> PreconditionedDenoiser:
        den = self.denoiser(net, d, autocast_dtype, declared)
        if d.consistency:  # f(x, sigma_min) = x exactly, at the process's smallest sigma
            den.boundary = float(den.sigma_min)
        return den

    @property
    def default_sampler(self) -> str | None:
        return self.denoiser_class.default_sampler

    @property
    def default_schedule(self) -> str:
        return self.denoiser_class.default_schedule


def _discrete_schedule(d: DiffusionConfig) -> DiscreteSchedule:
    return DiscreteSchedule.from_name(d.beta_schedule, d.timesteps, d.zero_terminal_snr, **(d.schedule_kwargs or {}))


def _ddpm_denoiser(net, d, autocast_dtype=None, declared=None):
    return DiscreteDenoiser(net, _discrete_schedule(d), d.objective, autocast_dtype, declared)


def _ddpm_loss(d, den):
    return losses.DiscreteLoss(den.schedule, d.objective, d.loss_type, d.min_snr_gamma, d.offset_noise, d.sigma_data,
                               loss_kind=d.loss_kind, vlb_weight=d.vlb_weight, t_sampling=d.t_sampling,
                               learned_variance=den.learned_variance)


def _sde(d: DiffusionConfig):
    if d.process == "ve":
        return SDES["ve"](d.sigma_min, d.sigma_max, d.eps_t)
    return SDES[d.process](d.beta_min, d.beta_max, d.eps_t)


def _sde_denoiser(net, d, autocast_dtype=None, declared=None):
    return SDEDenoiser(net, _sde(d), d.objective, autocast_dtype, declared)


def _sde_loss(d, den):
    return losses.SDELoss(den.sde, den.objective, d.loss_type, d.likelihood_weighting)


def _edm_denoiser(net, d, autocast_dtype=None, declared=None):
    return EDMDenoiser(net, d.sigma_data, d.sigma_min, d.sigma_max, autocast_dtype, declared)


def _edm_loss(d, den):
    return losses.EDMLoss(d.sigma_data, d.p_mean, d.p_std, d.loss_type)


def _flow_denoiser(net, d, autocast_dtype=None, declared=None):
    return FlowDenoiser(net, d.shift, autocast_dtype, declared)


def _flow_loss(d, den):
    return losses.FlowLoss(d.p_mean, d.p_std, d.shift, d.loss_type)


def _ncsn_denoiser(net, d, autocast_dtype=None, declared=None):
    return NCSNDenoiser(net, d.sigma_min, d.sigma_max, d.ncsn_levels, autocast_dtype, declared)


def _ncsn_loss(d, den):
    return losses.NCSNLoss(den.ladder, d.loss_type)


_SDE_FIELDS = ("objective", "eps_t", "likelihood_weighting")
_VP = dict(beta_min=0.1, beta_max=20.0, eps_t=1e-5)
_OBJECTIVES = ("eps", "x0", "v")
PROCESSES: dict[str, ProcessSpec] = {s.name: s for s in (
    ProcessSpec("ddpm", "discrete DDPM (Ho et al. 2020; improved DDPM's variants)",
                ("timesteps", "objective", "beta_schedule", "min_snr_gamma", "offset_noise", "zero_terminal_snr",
                 "sigma_data", "loss_kind", "vlb_weight", "t_sampling", "schedule_kwargs", "ddim_eta"),
                _ddpm_denoiser, _ddpm_loss, DiscreteDenoiser, objectives=_OBJECTIVES, kind="discrete_diffusion"),
    ProcessSpec("vp", "variance-preserving SDE (Song et al. 2021)", ("beta_min", "beta_max") + _SDE_FIELDS,
                _sde_denoiser, _sde_loss, SDEDenoiser, _VP, _OBJECTIVES + ("score",)),
    ProcessSpec("subvp", "sub-VP SDE (Song et al. 2021)", ("beta_min", "beta_max") + _SDE_FIELDS,
                _sde_denoiser, _sde_loss, SDEDenoiser, _VP, _OBJECTIVES + ("score",)),
    ProcessSpec("ve", "variance-exploding SDE (Song et al. 2021)", ("sigma_min", "sigma_max") + _SDE_FIELDS,
                _sde_denoiser, _sde_loss, SDEDenoiser, dict(sigma_min=0.01, sigma_max=50.0, eps_t=0.0),
                _OBJECTIVES + ("score",)),
    ProcessSpec("edm", "EDM preconditioning (Karras et al. 2022)", ("sigma_min", "sigma_max", "sigma_data", "p_mean", "p_std"),
                _edm_denoiser, _edm_loss, EDMDenoiser,
                dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, p_mean=-1.2, p_std=1.2)),
    ProcessSpec("ncsn", "noise-conditional score network (Song & Ermon 2019/2020)",
                ("sigma_min", "sigma_max", "ncsn_levels"), _ncsn_denoiser, _ncsn_loss, NCSNDenoiser,
                dict(sigma_min=0.01, sigma_max=50.0)),
    ProcessSpec("flow", "flow matching / rectified flow, velocity target, logit-normal t (Lipman et al. 2023; "
                "Esser et al. 2024)", ("p_mean", "p_std", "shift"), _flow_denoiser, _flow_loss, FlowDenoiser,
                dict(p_mean=0.0, p_std=1.0, shift=1.0)),
)}

# field -> the processes that read it (COMMON_FIELDS: all), derived from the registry
PROCESS_FIELDS: dict[str, tuple] = {
    f.name: tuple(n for n, spec in PROCESSES.items() if f.name in spec.fields)
    for f in dataclasses.fields(DiffusionConfig) if f.name not in COMMON_FIELDS}
_DEFAULT = DiffusionConfig()


def process_spec(name: str) -> ProcessSpec:
    if name not in PROCESSES:
        raise UserError(f"unknown process {name!r}; choose from {', '.join(PROCESSES)}", param="process")
    return PROCESSES[name]


def misplaced_fields(d: DiffusionConfig) -> list[str]:
    """Fields set away from their default for a process that does not read them."""
    return [n for n, procs in PROCESS_FIELDS.items() if d.process not in procs and getattr(d, n) != getattr(_DEFAULT, n)]


def for_process(d: DiffusionConfig, process: str) -> DiffusionConfig:
    """``d`` switched to ``process``: the fields the new process does not read go back to their
    defaults (a preset's ddpm settings do not follow a switch to edm)."""
    reset = {n: getattr(_DEFAULT, n) for n, procs in PROCESS_FIELDS.items() if process not in procs}
    return dataclasses.replace(d, process=process, **reset)


def validate(d: DiffusionConfig) -> DiffusionConfig:
    """The one check of a process config: a known process, no setting of another process, an
    objective the process takes."""
    spec = process_spec(d.process)
    bad = misplaced_fields(d)
    if bad:
        where = "; ".join(f"{n} applies to process {' / '.join(PROCESS_FIELDS[n])}" for n in bad)
        raise UserError(f"{where}, not {d.process!r}", param=bad[0])
    if spec.objectives and d.objective not in spec.objectives and d.objective not in ("pred_noise", "pred_x0", "pred_v"):
        raise UserError(f"objective {d.objective!r} does not apply to process {d.process!r}; it takes "
                        f"{', '.join(spec.objectives)}", param="objective")
    return d


def fill(d: DiffusionConfig, image_shape: tuple) -> DiffusionConfig:
    """``d`` validated, with the process's defaults in the fields left None (NCSN's ladder length
    from the image size: Song & Ermon 2020, Technique 2)."""
    spec = process_spec(validate(d).process)
    filled = dataclasses.replace(d, **{k: v for k, v in spec.defaults.items() if getattr(d, k) is None})
    if "ncsn_levels" in spec.fields and filled.ncsn_levels is None:
        dim = int(image_shape[0] * image_shape[1] * image_shape[2])
        filled = dataclasses.replace(filled, ncsn_levels=ncsn_levels_for(dim, filled.sigma_min, filled.sigma_max))
    return filled


def build_denoiser(net, d: DiffusionConfig, image_shape: tuple, autocast_dtype=None,
                   declared: dict | None = None) -> PreconditionedDenoiser:
    """The process ``d`` around ``net`` as a sigma-space denoiser (no training loss is built).
    ``declared``: what a checkpoint records (DenoiserInfo fields); ``image_shape`` is declared too."""
    d = fill(d, image_shape)
    return PROCESSES[d.process].make_denoiser(net, d, autocast_dtype,
                                              {"image_shape": tuple(image_shape), **(declared or {})})
