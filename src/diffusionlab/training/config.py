"""Typed configuration of a training run. Presets are code (``PRESETS``); the CLI maps flags
onto these fields; ``to_dict``/``from_dict`` give the JSON stored in every checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.dataclass_io import from_dict
from ..nn import UnetConfig, network_config
from ..models.processes import DiffusionConfig  # noqa: F401 (re-exported: the process config lives in processes.py)


def default_model(**overrides) -> UnetConfig:
    """The CLI's network when no ``--preset`` is given (the explicit default preset): a 3-level
    U-Net with one block per level, full attention at the lowest resolution, 2x2 patches (it runs
    at half the image size), greyscale; ``channels`` follows the data. The seed API's ``Unet()``
    keeps its own defaults (``UnetConfig``)."""
    return dataclasses.replace(UnetConfig(dim=64, dim_mults=(1, 2, 2), channels=1, num_res_blocks=1,
                                          linear_attn=False, patch_size=2), **overrides)


@dataclass
class ClassifierObjective:
    """What makes a run train a noise-aware classifier instead of a diffusion model
    (``TrainConfig.classifier``; ``training.classifier``): the cross-entropy of an image's label at
    x0 + sigma n, ln sigma uniform in [ln sigma_min, ln sigma_max]."""

    sigma_min: float = 0.002
    sigma_max: float = 160.0

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierObjective":
        return from_dict(cls, d)


@dataclass
class AutoencoderObjective:
    """What makes a run train latent diffusion's KL autoencoder (``TrainConfig.autoencoder``;
    ``training.autoencoder``): the per-element reconstruction loss (l1 or l2) plus beta times the
    KL of q(z | x) to N(0, I), summed over the latent and divided by the image's element count.

    beta = 1e-6 per image element is the weight of LDM's KL-f autoencoders (kl_weight 1e-6 on
    sums): the KL only keeps the posterior from collapsing to points of arbitrary scale; the
    latents' per-channel shift and scale measured on the training data normalise them for the
    diffusion model (``models.latent.LatentCodec``). L1 as LDM's reconstruction term."""

    beta: float = 1e-6
    loss: str = "l1"                 # l1 | l2

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderObjective":
        return from_dict(cls, d)


@dataclass
class FinetuneConfig:
    """What makes a run fine-tune a trained model (``TrainConfig.finetune``; ``training.finetune``):
    the base checkpoint and its content hash (recorded when the run starts, checked on resume),
    and either LoRA adapters (``models.lora``) of rank r, scale alpha / r on the ``targets`` layers
    (``nn.lora_targets``) with the base frozen, or ``full``: every weight trains (the baseline).

    Defaults measured by bench/lora.py on the demo text model teaching one digit in 300 steps
    (README "LoRA fine-tuning"): rank 4, alpha = rank (scale 1), attn+conv targets; the learning
    rate is ``FINETUNE_LR``."""

    base: str = ""
    base_sha256: str | None = None
    full: bool = False
    rank: int = 4
    alpha: float = 4.0
    targets: str = "attn+conv"

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return from_dict(cls, d)


DPO_BETA = 500.0
"""Diffusion-DPO's default beta in ``core.losses.DPOLoss``'s units (per-element mean squared
errors of the process's own loss). Measured by bench/dpo.py (README "Preference alignment") on
the demo's text model, 1,000 digit-confidence pairs, LoRA rank 4, lr 1e-3, 300 steps of 16 pairs,
200 samples without CFG: beta 100 / 200 / 500 / 2000 / 5000 took the reward from 0.847 to 0.999 /
0.995 / 0.935 / 0.892 / 0.874 and the FD to the held-out digits from 7.3 to 21.4 / 15.5 / 7.3 /
6.4 / 6.7: 500 is the strongest pull whose samples stay as close to the data as the base's
(below it the model trades diversity for the reward; an independent classifier agrees on the
gain at every beta)."""


@dataclass
class DistillConfig:
    """What makes a run few-step training (``TrainConfig.distill``; ``training.distill``,
    ``core.distill``): ``method`` consistency (ECT-style consistency tuning of an unconditional
    ``teacher``, LCM-style consistency distillation of a conditional one, or consistency training
    from scratch without a teacher) or progressive (one halving stage: the student's ``sigmas``
    from the teacher's ``teacher_sigmas``, twice the steps). ``steps_to``: the student's sampling
    steps; ``sigmas``: the grid it records for them; ``guidance_range``: the CFG scales s ~ U[low,
    high] distilled in (a conditional teacher; the student takes s as an input); ``q`` and
    ``stage_steps``: the consistency gap is divided by q every stage_steps optimizer steps;
    ``huber_c``: the pseudo-Huber constant (None: 0.00054 sqrt(d))."""

    method: str = "consistency"
    teacher: str | None = None
    teacher_sha256: str | None = None
    steps_to: int = 2
    sigmas: tuple | None = None
    teacher_sigmas: tuple | None = None
    guidance_range: tuple | None = None
    q: float = 2.0
    stage_steps: int = 100
    huber_c: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        return from_dict(cls, d)


@dataclass
class DPOConfig:
    """What makes a fine-tuning run preference alignment (``TrainConfig.dpo``; ``training.dpo``):
    Diffusion-DPO (``core.losses.DPOLoss``) with KL strength ``beta`` on the preference pairs of
    the folder ``TrainConfig.data`` (``data.pairs``), against the frozen base as the reference.
    The default beta is ``DPO_BETA``."""

    beta: float = DPO_BETA

    @classmethod
    def from_dict(cls, d: dict) -> "DPOConfig":
        return from_dict(cls, d)


@dataclass
class TrainConfig:
    data: str = "mnist"              # mnist | digits | path/to/images | hf:PATH | parquet:PATH | imagefolder:PATH
    image_column: str | None = None  # hf / parquet / imagefolder data: the images' column (None: the only Image
    #                                  feature, else image / img; data.hf)
    label_column: str | None = None  # ... the class labels' column (None: label, when it holds labels)
    caption_column: str | None = None  # ... the captions' column (None: text, else caption, when it holds strings)
    digits: tuple | None = None      # train on these classes of the data only (e.g. (3,) or (3, 5)); None: all
    image_size: int = 32
    hflip: bool = False
    val_fraction: float = 0.05       # image folders and datasets only; embedded sets have a fixed held-out split
    arch: str = "unet"               # the network (nn.NETWORKS)
    model: UnetConfig = field(default_factory=default_model)  # the arch's config dataclass
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    classifier: ClassifierObjective | None = None  # set: train a noise-aware classifier (arch "classifier",
    #                                  nn.CLASSIFIERS; training.classifier) on the labels instead of a diffusion model
    autoencoder: AutoencoderObjective | None = None  # set: train a KL autoencoder (arch "autoencoder",
    #                                  nn.AUTOENCODERS; training.autoencoder), the first stage of latent diffusion
    latent: str | None = None        # a KL autoencoder checkpoint: train on its latents (latent diffusion;
    #                                  training.latent_data); the network's channels and size come from it
    embed_autoencoder: bool = False  # latent: copy the autoencoder into the run (run/autoencoder) and record that copy
    finetune: FinetuneConfig | None = None  # set: start from a trained model (LoRA adapters or all weights;
    #                                  training.finetune); its network, process and conditioning come from the base
    dpo: DPOConfig | None = None     # set (with finetune): Diffusion-DPO on the preference pairs in the folder data
    distill: DistillConfig | None = None  # set: few-step training (training.distill): consistency or progressive
    batch_size: int = 64             # the global batch of one optimizer step (all processes, all micro-batches)
    grad_accum: int = 1              # micro-batches per step: each process takes batch_size / (processes x grad_accum)
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
    cond: str = "none"               # none | class (the data's labels) | text (captions) | image (training.conditioning)
    task: str | None = None          # image: superres (SR3: condition on the image downsampled to lowres)
    lowres: int | None = None        # image, superres: the low-resolution side (e.g. 16 for 32x32 images)
    text_encoder: str = "minilm"     # text: minilm (frozen, offline) | small (trained with the network)
    p_uncond: float = 0.1            # class / text: conditioning dropout, the null condition's share in training (CFG)
    guidance: float | None = None    # class / text: the CFG scale s recorded as the checkpoint's sampling default
    guide_at: float | None = None    # fraction of training at which the EMA weights are copied into
    #                                  guide.safetensors (autoguidance's weaker model); None: none
    precision: str = "auto"          # auto | fp32 | bf16 | fp16
    grad_checkpoint: bool = False    # recompute the network's blocks in the backward pass (less memory, ~30% slower)
    compile: bool = False            # torch.compile the network (nn.Module.compile; the cache: TORCHINDUCTOR_CACHE_DIR)
    on_nan: str = "skip"             # a non-finite loss / gradient: skip the step (stop past 5 in 100) | stop
    on_write_error: str = "stop"     # a failed write of the run's files: stop (exit 2) | continue without the file
    log_to: str = "jsonl"            # jsonl (metrics.jsonl) | tensorboard (metrics.jsonl + run/tensorboard events)
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
    sample_sampler: str | None = None  # grids, evaluations and the checkpoint's recorded default; None: the
    sample_steps: int | None = None    # process's own (NCSN its ladder), else the measured default of its kind
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
        d["model"] = network_config(d.get("arch", "unet"), d.get("model", {}))
        d["diffusion"] = DiffusionConfig.from_dict(d.get("diffusion", {}))
        d["classifier"] = ClassifierObjective.from_dict(d["classifier"]) if d.get("classifier") else None
        d["autoencoder"] = AutoencoderObjective.from_dict(d["autoencoder"]) if d.get("autoencoder") else None
        d["finetune"] = FinetuneConfig.from_dict(d["finetune"]) if d.get("finetune") else None
        d["dpo"] = DPOConfig.from_dict(d["dpo"]) if d.get("dpo") else None
        d["distill"] = DistillConfig.from_dict(d["distill"]) if d.get("distill") else None
        return from_dict(cls, d)


def objective_run(cfg: TrainConfig, field_name: str, registry: dict, noun: str) -> bool:
    """Whether ``cfg`` trains a network of ``registry`` (a classifier, an autoencoder) because
    its objective ``field_name`` is set, and that the arch agrees: a ``UserError`` naming the field
    when only one of the two says so. Such runs take no autoguidance snapshot."""
    from ..errors import UserError

    if getattr(cfg, field_name) is None:
        if cfg.arch in registry:
            raise UserError(f"arch {cfg.arch!r} is {noun}, not a denoiser: set {field_name} to train it", param="arch")
        return False
    if cfg.arch not in registry:
        raise UserError(f"{noun} run trains {', '.join(registry)}, not {cfg.arch!r}", param="arch")
    if cfg.guide_at is not None:
        raise UserError("the autoguidance snapshot (guide_at) belongs to diffusion models", param="guide_at")
    return True


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


def demo_text_config(**overrides) -> TrainConfig:
    """The text-to-image `make demo` run: ``demo_config``'s MNIST recipe conditioned on captions
    of the digits (training phrasings, ``text.captions``) encoded by the frozen MiniLM, and the
    sampling defaults the checkpoint records: SDE-DPM-Solver++(2M), 16 steps, CFG scale 3. No
    autoguidance snapshot and no grids during training (sampling time is the demo's).

    Conditioning dropout 0.5: half the steps train the null path, which is what the empty prompt
    and unconditional uses (inpainting) sample. At the AVX2 machine's step count (491 steps,
    fp32; bench/NOTES.md "Text-to-image demo") p_uncond 0.3 left the empty prompt at confident
    0.50 against the unconditional demo's 0.544 there, while 0.5 gave 0.588 (FD 4.4x the floor)
    and kept held-out-prompt accuracy at 0.94 (0.98 at 0.3). The stochastic sampler beat
    DPM-Solver++(2M) on the null path (confident 0.53 vs 0.46 at 12 steps, 500 samples)."""
    cfg = demo_config(cond="text", text_encoder="minilm", p_uncond=0.5, guidance=3.0, guide_at=None,
                      sample_sampler="dpmpp_2m_sde", sample_steps=16, sample_every=0)
    return dataclasses.replace(cfg, **overrides)


def demo_text_latent_config(**overrides) -> TrainConfig:
    """A small Stable Diffusion: ``demo_text_config``'s recipe (MiniLM captions, v-prediction,
    cosine schedule, CFG 3, SDE-DPM-Solver++(2M) 16 steps) on an autoencoder's latents
    (``--latent AE``, required). With f = 2 the demo U-Net (2x2 patches) runs on 16x16 latents at
    8x8, a quarter of the pixel demo's activations; for f = 4 and 8 the trainer fits the U-Net to
    the smaller grid (``Trainer._fit_latent_network``)."""
    return demo_text_config(**{"out_dir": "runs/latent-text", **overrides})


def tiny_config(**overrides) -> TrainConfig:
    """A seconds-long run for tests and smoke checks."""
    cfg = TrainConfig(model=default_model(dim=8, dim_mults=(1, 2), mid_attn=False, groups=4, patch_size=1),
                      diffusion=DiffusionConfig(timesteps=100), batch_size=8, max_steps=4,
                      log_every=1, val_every=2, n_val=16, sample_every=0, checkpoint_every=2,
                      n_grid=4, sample_steps=4, warmup_steps=2, progress=False, precision="fp32")
    return dataclasses.replace(cfg, **overrides)


def default_config(**overrides) -> TrainConfig:
    """The CLI without ``--preset``: ``TrainConfig()`` (the default network, ``default_model``)."""
    return dataclasses.replace(TrainConfig(), **overrides)


PRESETS = {"default": default_config, "demo": demo_config, "demo-text": demo_text_config,
           "demo-text-latent": demo_text_latent_config, "tiny": tiny_config}


def _rule(kind: str, lo=None, hi=None, lo_open=False, hi_open=False, optional=False):
    return (kind, lo, hi, lo_open, hi_open, optional)


# the valid range of every number a run reads, checked before anything is built or written
# (``check_ranges``): (int | float, low, high, low excluded, high excluded, None allowed)
RANGES = {
    "image_size": _rule("int", 1), "batch_size": _rule("int", 1), "grad_accum": _rule("int", 1),
    "max_steps": _rule("int", 1, optional=True), "time_budget": _rule("float", 0, lo_open=True, optional=True),
    "lr": _rule("float", 0, lo_open=True), "weight_decay": _rule("float", 0), "warmup_steps": _rule("int", 0),
    "min_lr_ratio": _rule("float", 0, 1), "grad_clip": _rule("float", 0, lo_open=True, optional=True),
    "ema_decay": _rule("float", 0, 1, hi_open=True), "ema_power": _rule("float", 0, lo_open=True),
    "p_uncond": _rule("float", 0, 1), "guidance": _rule("float", 0, optional=True),
    "guide_at": _rule("float", 0, 1, True, True, optional=True), "num_threads": _rule("int", 1, optional=True),
    "seed": _rule("int", 0), "log_every": _rule("int", 1), "val_every": _rule("int", 0), "n_val": _rule("int", 1),
    "sample_every": _rule("int", 0), "checkpoint_every": _rule("int", 0), "keep_checkpoints": _rule("int", 1),
    "n_grid": _rule("int", 1), "eval_every": _rule("int", 0), "eval_n": _rule("int", 2),
    "eval_steps": _rule("int", 1, optional=True), "sample_steps": _rule("int", 1, optional=True),
    "val_fraction": _rule("float", 0, 1, True, True),
}


def check_ranges(cfg: "TrainConfig") -> None:
    """Every number of ``cfg`` in its range (``RANGES``), NaN and infinity refused: a
    ``UserError`` naming the field (the CLI names its flag) and the valid range."""
    import math

    from ..errors import UserError

    for name, (kind, lo, hi, lo_open, hi_open, optional) in RANGES.items():
        v = getattr(cfg, name)
        if v is None and optional:
            continue
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        want = f"{'an integer' if kind == 'int' else 'a finite number'} {' and '.join(filter(None, (lo_s, hi_s)))}"
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind == "float" or float(v).is_integer())
        ok = ok and math.isfinite(v)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise UserError(f"{name} must be {want}, got {v!r}", param=name)
