"""``diffusionlab train``: every config flag is one row of ``FLAGS`` (flag -> dataclass field),
applied by one loop; tests/test_cli_flags.py checks each row against the dataclasses."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable

from ...core.losses import LOSS_KINDS, LOSS_TYPES, T_SAMPLINGS
from ...core.schedules import BETA_SCHEDULES
from ...errors import UserError
from ...models.processes import PROCESSES
from ...nn import NETWORKS
from ...text.encoders import ENCODERS
from ...training.conditioning import COND_KINDS, IMAGE_TASKS
from ...training.config import PRESETS
from .options import finished, ints

SWITCH = "switch"  # a flag without a value: store_true, None when absent


@dataclass(frozen=True)
class Flag:
    """One train flag: ``field`` is a TrainConfig field, ``model.X`` (the network's config) or
    ``diffusion.X`` (DiffusionConfig); ``convert`` maps the given value to the field's."""

    flag: str
    field: str
    type: object = str
    help: str | None = None
    choices: tuple | None = None
    convert: Callable | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def add_to(self, p) -> None:
        if self.type == SWITCH:
            p.add_argument(self.flag, dest=self.dest, action="store_true", default=None, help=self.help)
        else:
            p.add_argument(self.flag, dest=self.dest, type=self.type, choices=self.choices, help=self.help)


F = Flag
FLAGS = (
    F("--data", "data", help="mnist | digits | path/to/image/folder | hf:PATH (a datasets save_to_disk folder) | "
                             "parquet:PATH (a .parquet file or folder) | imagefolder:PATH (a folder with "
                             "metadata.csv / .jsonl); datasets are read lazily, offline (default mnist)"),
    F("--image-column", "image_column", str, "hf: / parquet: / imagefolder: data: the images' column (default: "
                                             "the only Image feature, else image / img)"),
    F("--label-column", "label_column", str, "hf: / parquet: / imagefolder: data: the class labels' column, a "
                                             "ClassLabel, integers or strings (default: label, when present)"),
    F("--caption-column", "caption_column", str, "hf: / parquet: / imagefolder: data: the captions' column for "
                                                 "--cond text (default: text, else caption, when present)"),
    F("--digits", "digits", ints, "only these classes of the data, e.g. 3 or 3,5 (the digit itself for mnist / "
                                  "digits; a folder's classes in sorted order)"),
    F("--image-size", "image_size", int),
    F("--channels", "model.channels", int, "1 (greyscale) or 3 (RGB; the default for folders)", (1, 3)),
    F("--hflip", "hflip", SWITCH, "random horizontal flips"),
    F("--arch", "arch", help=f"the network, one of nn.NETWORKS ({', '.join(NETWORKS)}; default unet); dit starts "
                             "from nn.dit_demo_model (patch 4, width 256, depth 4); --dim ... set the U-Net, "
                             "--hidden ... the DiT"),
    F("--hidden", "model.hidden", int, "dit: width"),
    F("--depth", "model.depth", int, "dit: transformer blocks"),
    F("--heads", "model.heads", int, "dit: attention heads"),
    F("--patch-size", "model.patch_size", int, "unet, dit: pixels per patch side"),
    F("--dim", "model.dim", int, "U-Net base width"),
    F("--dim-mults", "model.dim_mults", ints, "U-Net width multipliers per level, e.g. 1,2,2"),
    F("--num-res-blocks", "model.num_res_blocks", int, "U-Net blocks per level"),
    F("--block", "model.block", str, "U-Net block type", ("resnet", "convnext")),
    F("--layout", "model.layout", str, "U-Net: native (ours) | diffusers (a diffusers UNet2DModel, needs the [interop] "
                                       "extra; `export --format diffusers` writes it as a diffusers folder)",
      ("native", "diffusers")),
    F("--dropout", "model.dropout", float, "U-Net dropout"),
    F("--learned-variance", "model.learned_variance", SWITCH,
      "ddpm: the network also outputs improved DDPM's variance channel (implies --loss-kind hybrid)"),
    F("--process", "diffusion.process", str, "; ".join(f"{k}: {v.summary}" for k, v in PROCESSES.items())
      + " (default ddpm; README 'Processes')", tuple(PROCESSES)),
    F("--objective", "diffusion.objective", str, "score: vp, subvp, ve only", ("eps", "x0", "v", "score")),
    F("--schedule", "diffusion.beta_schedule", str, "ddpm beta schedule", tuple(BETA_SCHEDULES)),
    F("--timesteps", "diffusion.timesteps", int, "ddpm"),
    F("--loss", "diffusion.loss_type", str, None, tuple(LOSS_TYPES)),
    F("--min-snr-gamma", "diffusion.min_snr_gamma", float, "ddpm; 0 disables min-SNR weighting",
      convert=lambda v: v or None),
    F("--offset-noise", "diffusion.offset_noise", float, "ddpm"),
    F("--sigma-data", "diffusion.sigma_data", float, "edm: data std (0.5); ddpm: EDM loss weighting with this std"),
    F("--zero-terminal-snr", "diffusion.zero_terminal_snr", SWITCH, "ddpm"),
    F("--loss-kind", "diffusion.loss_kind", str, "ddpm: simple (L_simple), hybrid (L_simple + lambda L_vlb; "
                                                 "default with --learned-variance), vlb", tuple(LOSS_KINDS)),
    F("--vlb-weight", "diffusion.vlb_weight", float, "ddpm, hybrid: lambda (0.001)"),
    F("--t-sampling", "diffusion.t_sampling", str, "ddpm: timestep sampling; importance = improved DDPM's, for "
                                                   "--loss-kind vlb", tuple(T_SAMPLINGS)),
    F("--beta-min", "diffusion.beta_min", float, "vp, subvp (0.1)"),
    F("--beta-max", "diffusion.beta_max", float, "vp, subvp (20)"),
    F("--eps-t", "diffusion.eps_t", float, "vp, subvp, ve: smallest time (1e-5; ve 0)"),
    F("--sigma-min", "diffusion.sigma_min", float, "ve, ncsn (0.01), edm (0.002)"),
    F("--sigma-max", "diffusion.sigma_max", float, "ve, ncsn (50), edm (80)"),
    F("--likelihood-weighting", "diffusion.likelihood_weighting", SWITCH,
      "vp, subvp, ve: weight the score loss by g(t)^2"),
    F("--p-mean", "diffusion.p_mean", float, "edm: mean of ln sigma in training (-1.2); flow: of logit t (0)"),
    F("--p-std", "diffusion.p_std", float, "edm: std of ln sigma in training (1.2); flow: of logit t (1)"),
    F("--shift", "diffusion.shift", float, "flow: resolution shift s, t' = s t / (1 + (s - 1) t), i.e. sigma' = "
                                           "s sigma, in training and the recorded sampling grid (1; SD3 uses 3)"),
    F("--ncsn-levels", "diffusion.ncsn_levels", int, "ncsn: ladder length (default from the image size)"),
    F("--steps", "max_steps", int, "optimizer steps"),
    F("--time-budget", "time_budget", float, "seconds of training (validation/sampling excluded)"),
    F("--batch-size", "batch_size", int, "the global batch of one optimizer step, over all processes and "
                                         "micro-batches"),
    F("--grad-accum", "grad_accum", int, "micro-batches per step (memory only: the step is the same); each "
                                         "process takes batch-size / (processes x grad-accum) at a time"),
    F("--lr", "lr", float),
    F("--warmup-steps", "warmup_steps", int),
    F("--lr-schedule", "lr_schedule", str, None, ("cosine", "constant")),
    F("--grad-clip", "grad_clip", float),
    F("--ema-decay", "ema_decay", float),
    F("--cond", "cond", str, "class: condition on the data's labels (embedded sets; folders with one sub-folder "
                             "per class or a labels.csv; a dataset's --label-column); text: on captions (the "
                             "embedded digits' are made from their labels; folders need a captions.jsonl, datasets "
                             "a --caption-column), by cross-attention; image: on an image "
                             "made from each training image (--task superres), concatenated to the input; all with "
                             "a null condition for CFG", tuple(COND_KINDS)),
    F("--task", "task", str, "image: superres (SR3): condition on the image area-downsampled to --lowres and "
                             "bicubic-upsampled back; sample with `diffusionlab upscale`", tuple(IMAGE_TASKS)),
    F("--lowres", "lowres", int, "image, superres: the low-resolution side (e.g. 16 for 32x32 images)"),
    F("--text-encoder", "text_encoder", str, "text: minilm (frozen all-MiniLM-L6-v2, offline; default) or small "
                                             "(a byte-level transformer trained with the network)", tuple(ENCODERS)),
    F("--p-uncond", "p_uncond", float, "class / text / image: conditioning dropout, the null condition's share (0.1)"),
    F("--guidance", "guidance", float, "class / text: the CFG scale recorded as the checkpoint's sampling default"),
    F("--latent", "latent", str, "a KL autoencoder (train-autoencoder's run): train on its latents (latent "
                                 "diffusion); the network's channels and size come from it"),
    F("--embed-autoencoder", "embed_autoencoder", SWITCH, "--latent: copy the autoencoder into the run and record "
                                                          "that copy"),
    F("--guide-at", "guide_at", float, "keep the EMA weights at this fraction of training (e.g. 0.3) as the "
                                       "autoguidance guide (sample --autoguidance W)"),
    F("--precision", "precision", str, None, ("auto", "fp32", "bf16", "fp16")),
    F("--grad-checkpoint", "grad_checkpoint", SWITCH, "recompute the network's blocks in the backward pass: less "
                                                      "activation memory for large models, about a third slower"),
    F("--on-nan", "on_nan", str, "a non-finite loss or gradient: skip the step (counted in metrics.jsonl; more "
                                 "than 5 within 100 steps stops the run) or stop at once", ("skip", "stop")),
    F("--on-write-error", "on_write_error", str, "a run file that cannot be written (disk full, read-only, "
                                                 "no permission): stop (exit 2, the last checkpoint intact) or "
                                                 "continue without it", ("stop", "continue")),
    F("--log", "log_to", str, "where the metrics go besides metrics.jsonl: tensorboard writes scalars and sample "
                              "grids to OUT/tensorboard (the [tensorboard] extra)", ("jsonl", "tensorboard")),
    F("--compile", "compile", SWITCH, "torch.compile the network (the first steps compile: tens of seconds; cache "
                                      "in TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER)"),
    F("--device", "device"),
    F("--threads", "num_threads", int),
    F("--seed", "seed", int),
    F("--out", "out_dir", str, "run directory"),
    F("--sample-every", "sample_every", int),
    F("--checkpoint-every", "checkpoint_every", int),
    F("--val-every", "val_every", int),
    F("--eval-every", "eval_every", int, "sample-quality evaluation every N steps (metrics.jsonl, eval.png)"),
    F("--eval-n", "eval_n", int, "samples per evaluation (500)"),
    F("--eval-steps", "eval_steps", int, "sampler steps per evaluation (20)"),
    F("--no-progress", "progress", SWITCH, "no progress bar", convert=lambda v: not v),
)
# network fields that only one process reads (processes.PROCESS_FIELDS covers the DiffusionConfig ones)
NETWORK_PROCESS_FIELDS = {"learned_variance": ("ddpm",)}
PARAMS = {f.field.rpartition(".")[2]: f.flag for f in FLAGS}  # a config field named in a UserError -> its flag


def register(sub) -> None:
    from .options import param_flags

    p = sub.add_parser("train", help="train a diffusion model",
                       description="Train a diffusion model (a U-Net or a DiT, nn.NETWORKS) on MNIST-5k, the 8x8 "
                                   "digits, a folder of images or a Hugging Face dataset on disk.")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="start from a preset config (default: `default`, training.config.default_config); "
                        "demo-text is `make demo`'s text-to-image run")
    for f in FLAGS:
        f.add_to(p)
    p.add_argument("--few-step", choices=("consistency",), default=None,
                   help="train a few-step generator from scratch: consistency training (the consistency "
                        "parameterisation and loss of `distill --method consistency` without a teacher; sampled "
                        "with the consistency sampler, 2 steps; README 'Few-step generation')")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest intact checkpoint (damaged newer ones are "
                        "renamed aside as step-N.damaged, with a message)")
    p.add_argument("--strict-resume", action="store_true",
                   help="with --resume: stop at a damaged newest checkpoint instead of falling back")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (its checkpoints, metrics, samples); without it, "
                        "training into a folder that holds checkpoints is refused")
    p.set_defaults(run=run, param_flags=param_flags(p, PARAMS))


def run(a) -> int:
    from ...training import Trainer

    if a.strict_resume and not a.resume:
        raise UserError("--strict-resume applies to --resume")
    cfg = train_config(a)
    summary = Trainer(config=cfg, resume=a.resume, overwrite=a.overwrite, strict_resume=a.strict_resume).train()
    print(json.dumps(summary, indent=2))
    return finished("train", summary)


def given(a) -> dict:
    """{Flag: value} of the flags on the command line, converted to their fields' values."""
    out = {}
    for f in FLAGS:
        v = getattr(a, f.dest)
        if v is not None:
            out[f] = f.convert(v) if f.convert else v
    return out


def train_config(a):
    """The preset (``--preset``, else ``default``) with every given flag applied."""
    cfg = _base(a)
    flags = given(a)
    _check(flags, cfg.arch, cfg.diffusion.process)
    parts = {"": {}, "model": {}, "diffusion": {}}
    for f, v in flags.items():
        part, _, name = f.field.rpartition(".")
        parts[part][name] = v
    _implied(parts)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **parts["model"]),
                              diffusion=dataclasses.replace(cfg.diffusion, **parts["diffusion"]), **parts[""])
    if getattr(a, "few_step", None) == "consistency":  # consistency training from scratch (training.distill)
        from ...training.distill import consistency_training

        cfg = consistency_training(cfg)
    return cfg


def _base(a):
    """The preset switched to ``--arch`` (a demo-sized network of that kind, channels kept) and
    to ``--process`` (the settings the new process does not read reset)."""
    from ...models.processes import for_process
    from ...nn import dit_demo_model

    cfg = PRESETS[a.preset or "default"]()
    if a.arch is not None and a.arch not in NETWORKS:
        raise UserError(f"unknown --arch {a.arch!r}; choose from {', '.join(NETWORKS)}")
    if a.arch is not None and a.arch != cfg.arch:
        cfg = dataclasses.replace(cfg, arch=a.arch, model=dit_demo_model(channels=cfg.model.channels))
    if a.process is not None and a.process != cfg.diffusion.process:
        cfg = dataclasses.replace(cfg, diffusion=for_process(cfg.diffusion, a.process))
    return cfg


def _check(flags: dict, arch: str, process: str) -> None:
    """A network flag of another network, or a process flag of another process, is a user error."""
    from ...models.processes import PROCESS_FIELDS, PROCESSES

    for f in flags:
        part, _, name = f.field.rpartition(".")
        if part == "model" and name not in _fields(NETWORKS[arch].Config):
            owners = [k for k, cls in NETWORKS.items() if name in _fields(cls.Config)]
            raise UserError(f"{f.flag} sets the {' / '.join(owners)} network, not --arch {arch}")
        procs = PROCESS_FIELDS.get(name) if part == "diffusion" else NETWORK_PROCESS_FIELDS.get(name)
        if procs is not None and process not in procs:
            raise UserError(f"{f.flag} applies to --process {' / '.join(procs)}, not {process}")
    objective = next((v for f, v in flags.items() if f.field == "diffusion.objective"), None)
    takes = _score_processes(PROCESSES)
    if objective == "score" and process not in takes:
        raise UserError(f"--objective score applies to --process {' / '.join(takes)}")


def _score_processes(processes) -> list:
    """The processes that take ``objective score``: from each spec's ``objectives`` (PROCESSES a
    dict name -> spec), else the SDE processes (PROCESSES a tuple of names, before the specs)."""
    if isinstance(processes, dict):
        return [p for p, spec in processes.items() if "score" in spec.objectives]
    from ...models.processes import SDE_PROCESSES

    return list(SDE_PROCESSES)


def _fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def _implied(parts: dict) -> None:
    """--learned-variance implies --loss-kind hybrid; an image folder is RGB unless --channels says."""
    from ...data.embedded import EMBEDDED_DATASETS

    if parts["model"].get("learned_variance") and "loss_kind" not in parts["diffusion"]:
        parts["diffusion"]["loss_kind"] = "hybrid"
    if parts[""].get("data") not in (None, *EMBEDDED_DATASETS) and "channels" not in parts["model"]:
        parts["model"]["channels"] = 3
