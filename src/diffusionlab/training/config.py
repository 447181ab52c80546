"""Typed configuration of a training run. Presets are code (``PRESETS``); the CLI maps flags
onto these fields; ``to_dict``/``from_dict`` give the JSON stored in every checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class UnetConfig:
    dim: int = 64
    dim_mults: tuple = (1, 2, 2)
    channels: int = 1
    num_res_blocks: int = 1
    block: str = "resnet"
    full_attn: tuple | None = None
    linear_attn: bool = False
    mid_attn: bool = True
    attn_heads: int = 4
    attn_dim_head: int = 32
    dropout: float = 0.0
    groups: int = 8
    learned_sinusoidal: bool = False
    num_classes: int | None = None
    cond_dim: int | None = None
    learned_variance: bool = False
    patch_size: int = 2


@dataclass
class DiffusionConfig:
    """``process`` picks the model family (README "Processes"); the other fields apply to the
    processes named in their comments. None means the process's own default
    (continuous.PROCESS_PARAMS)."""
    process: str = "ddpm"            # ddpm | vp | subvp | ve | edm | ncsn
    timesteps: int = 1000            # ddpm
    objective: str = "v"             # ddpm: eps | x0 | v; vp, subvp, ve: also score
    beta_schedule: str = "cosine"    # ddpm: see schedules.BETA_SCHEDULES
    loss_type: str = "l2"            # l1 | l2 | huber
    min_snr_gamma: float | None = None  # ddpm, e.g. 5; measured: hurts the 10-minute MNIST demo
    offset_noise: float = 0.0        # ddpm
    zero_terminal_snr: bool = False  # ddpm
    sigma_data: float | None = None     # ddpm: EDM loss weighting (losses.edm_weight), None = none; edm: 0.5
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


@dataclass
class TrainConfig:
    data: str = "mnist"              # mnist | digits | path/to/images
    image_size: int = 32
    hflip: bool = False
    val_fraction: float = 0.05       # image folders only; embedded sets have a fixed held-out split
    model: UnetConfig = field(default_factory=UnetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.99)
    warmup_steps: int = 100
    lr_schedule: str = "cosine"      # cosine | constant (after linear warm-up)
    min_lr_ratio: float = 0.05
    max_steps: int | None = None     # None with time_budget: estimated from measured speed
    time_budget: float | None = None  # seconds of training (evaluation/checkpoint time excluded)
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9995
    ema_power: float = 2 / 3
    guide_at: float | None = None    # fraction of training at which the EMA weights are copied into
    #                                  guide.safetensors (autoguidance's weaker model); None: none
    precision: str = "auto"          # auto | fp32 | bf16 | fp16
    device: str = "auto"             # auto | cpu | cuda | mps
    num_threads: int | None = None
    seed: int = 0
    out_dir: str = "runs/train"
    log_every: int = 25
    val_every: int = 250
    n_val: int = 512
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    n_grid: int = 64
    sample_sampler: str = "ddpm"
    sample_steps: int = 50
    eval_every: int = 0              # steps between sample-quality evaluations (0: off); excluded from time budgets
    eval_n: int = 500                # samples per evaluation (the same per-sample seeds every time)
    eval_steps: int = 20             # sampler steps of an evaluation (with sample_sampler)
    eval_metrics: str = "fd,kid,pr,dc"  # see evaluation.suite; digits features for greyscale, Inception for RGB
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = UnetConfig(**_known(UnetConfig, d.get("model", {})))
        d["diffusion"] = DiffusionConfig(**_known(DiffusionConfig, d.get("diffusion", {})))
        for k in ("adam_betas",):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**_known(cls, d))


def _known(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    out = dict(d)
    for k in ("dim_mults", "full_attn"):
        if out.get(k) is not None and k in names:
            out[k] = tuple(out[k])
    return out


def demo_config(**overrides) -> TrainConfig:
    """The `make demo` run: MNIST-5k at 32x32, a FLOP-efficient U-Net (2x2 patches, so it runs
    at 16x16), v-prediction on a cosine schedule, bf16 autocast on CPU, 10 minutes.
    Measured on 2 cores (5-minute runs, 500 samples): min-SNR-5 weighting and batch 32 were
    worse; DDPM ancestral sampling beat DDIM (eta 0 and 0.5) at 50 steps. 10-minute runs,
    1,000 samples (bench/NOTES.md): lr 5e-4 gave the best FD (2.7x the floor vs 3.2x at 1e-3 and
    3.1x at 3e-3) at about the same confident fraction (0.71 vs 0.72 and 0.70), with fewer steps.
    guide_at 0.25 keeps the EMA weights of the first quarter as the autoguidance guide the demo
    samples with (demo.DEMO_AUTOGUIDANCE; bench/NOTES.md "Autoguidance"): a snapshot at 27% and
    weight 2.5 took the confident fraction from 0.67 to 0.83 at 25 DDPM steps; 13% was too weak a
    guide (FD 3.9x), 40% and later too close to the model (0.76 at weight 2)."""
    cfg = TrainConfig(data="mnist", image_size=32, time_budget=600.0, out_dir="runs/demo", log_every=10,
                      val_every=100, lr=5e-4, guide_at=0.25)
    return dataclasses.replace(cfg, **overrides)


def tiny_config(**overrides) -> TrainConfig:
    """A seconds-long run for tests and smoke checks."""
    cfg = TrainConfig(model=UnetConfig(dim=8, dim_mults=(1, 2), mid_attn=False, groups=4, patch_size=1),
                      diffusion=DiffusionConfig(timesteps=100), batch_size=8, max_steps=4,
                      log_every=1, val_every=2, n_val=16, sample_every=0, checkpoint_every=2,
                      n_grid=4, sample_steps=4, warmup_steps=2, progress=False, precision="fp32")
    return dataclasses.replace(cfg, **overrides)


PRESETS = {"demo": demo_config, "tiny": tiny_config}
