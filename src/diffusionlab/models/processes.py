"""The process of a model as ONE typed config, ONE table of which field applies to which
process, ONE validation and ONE builder (``build_diffusion``), used by the trainer, the
checkpoint loader and the CLI alike.

``DiffusionConfig.process`` picks the family (README "Processes"): ``ddpm`` (discrete,
``GaussianDiffusion``) or ``vp`` / ``subvp`` / ``ve`` / ``edm`` / ``ncsn`` (``ContinuousDiffusion``).
``PROCESS_FIELDS`` says which other field each process reads; a field set away from its
default for a process that does not read it is an error (``validate``). Fields left None take
the process's own default (``PROCESS_DEFAULTS``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core.dataclass_io import from_dict

PROCESSES = ("ddpm", "vp", "subvp", "ve", "edm", "ncsn")
SDE_PROCESSES = ("vp", "subvp", "ve")


@dataclass
class DiffusionConfig:
    process: str = "ddpm"            # ddpm | vp | subvp | ve | edm | ncsn
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
    p_mean: float | None = None      # edm: ln sigma ~ N(p_mean, p_std^2) in training; -1.2
    p_std: float | None = None       # edm: 1.2
    ncsn_levels: int | None = None   # ncsn ladder length; None: Song & Ermon 2020 Technique 2 for the image
    schedule_kwargs: dict | None = None  # ddpm: extra arguments of the beta schedule (e.g. sigmoid's start/end)
    ddim_eta: float = 0.0            # ddpm: the eta of GaussianDiffusion.sample's DDIM default
    sampling_steps: int | None = None  # every process: steps of the seed API's sample() (None: ddpm all T,
    #                                    the others their own default or 50)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        """From a stored dict (``core.dataclass_io.from_dict``)."""
        return from_dict(cls, d)


# field -> the processes that read it (process and loss_type: all)
PROCESS_FIELDS: dict[str, tuple] = {
    "timesteps": ("ddpm",), "objective": ("ddpm", *SDE_PROCESSES), "beta_schedule": ("ddpm",),
    "min_snr_gamma": ("ddpm",), "offset_noise": ("ddpm",), "zero_terminal_snr": ("ddpm",),
    "sigma_data": ("ddpm", "edm"), "loss_kind": ("ddpm",), "vlb_weight": ("ddpm",), "t_sampling": ("ddpm",),
    "beta_min": ("vp", "subvp"), "beta_max": ("vp", "subvp"), "eps_t": SDE_PROCESSES,
    "sigma_min": ("ve", "edm", "ncsn"), "sigma_max": ("ve", "edm", "ncsn"), "likelihood_weighting": SDE_PROCESSES,
    "p_mean": ("edm",), "p_std": ("edm",), "ncsn_levels": ("ncsn",), "schedule_kwargs": ("ddpm",),
    "ddim_eta": ("ddpm",),
}
# the continuous processes' own defaults for the fields left None
PROCESS_DEFAULTS: dict[str, dict] = {
    "vp": dict(beta_min=0.1, beta_max=20.0, eps_t=1e-5),
    "subvp": dict(beta_min=0.1, beta_max=20.0, eps_t=1e-5),
    "ve": dict(sigma_min=0.01, sigma_max=50.0, eps_t=0.0),
    "edm": dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, p_mean=-1.2, p_std=1.2),
    "ncsn": dict(sigma_min=0.01, sigma_max=50.0, ncsn_levels=None),   # None: Technique 2 for the image
}
_DEFAULT = DiffusionConfig()


def misplaced_fields(d: DiffusionConfig) -> list[str]:
    """Fields set away from their default for a process that does not read them."""
    out = []
    for name, procs in PROCESS_FIELDS.items():
        if d.process not in procs and getattr(d, name) != getattr(_DEFAULT, name):
            out.append(name)
    return out


def for_process(d: DiffusionConfig, process: str) -> DiffusionConfig:
    """``d`` switched to ``process``: the fields the new process does not read go back to their
    defaults (a preset's ddpm settings do not follow a switch to edm)."""
    reset = {n: getattr(_DEFAULT, n) for n, procs in PROCESS_FIELDS.items() if process not in procs}
    return dataclasses.replace(d, process=process, **reset)


def validate(d: DiffusionConfig) -> DiffusionConfig:
    """The one check of a process config: a known process, and no setting of another process."""
    if d.process not in PROCESSES:
        raise ValueError(f"unknown process {d.process!r}; choose from {', '.join(PROCESSES)}")
    bad = misplaced_fields(d)
    if bad:
        where = "; ".join(f"{n} applies to process {' / '.join(PROCESS_FIELDS[n])}" for n in bad)
        raise ValueError(f"{where}, not {d.process!r}")
    if d.objective == "score" and d.process == "ddpm":
        raise ValueError("objective 'score' applies to vp / subvp / ve")
    return d


def continuous_params(d: DiffusionConfig) -> dict:
    """A continuous process's parameters with its defaults filled in."""
    return {k: (getattr(d, k) if getattr(d, k) is not None else v) for k, v in PROCESS_DEFAULTS[d.process].items()}
