"""``diffusionlab finetune``: LoRA adapters (or, with ``--full``, every weight) trained on a trained
model by the project's trainer (``training.finetune``). The training flags are ``train``'s own
rows of ``train.FLAGS``, with the same meaning; the network, process and conditioning come from
the base and have no flags here."""
from __future__ import annotations

import json

from ...errors import UserError
from ...nn.lora_targets import LORA_TARGETS
from ...training.finetune import FINETUNE_LR, FROM_BASE
from . import options
from .train import FLAGS, PARAMS

# train's flags that set how to train (not what: the network, process and conditioning are the base's)
TRAINING_FLAGS = tuple(f for f in FLAGS if "." not in f.field and f.field not in FROM_BASE
                       and f.field not in ("guide_at", "embed_autoencoder"))


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a trained model: LoRA adapters on a frozen base (or --full)",
                       description="Fine-tune a trained diffusion model on new data (e.g. --data mnist --digits 3). "
                                   "By default LoRA adapters (peft) train on a frozen base and the run folder holds "
                                   "the adapter in peft's layout: sample it with `sample --ckpt BASE --lora RUN`. "
                                   f"Defaults: rank 4, alpha = rank, attn+conv layers, lr {FINETUNE_LR:g} (--full: the base's lr), 20 warm-up "
                                   "steps, the base's batch size and conditioning dropout (README 'LoRA fine-tuning').")
    add_options(p, TRAINING_FLAGS)
    p.set_defaults(run=run, param_flags=param_flags(p))


def add_options(p, training_flags, full_help: str = "train every weight instead of adapters (the baseline; the "
                                                     "run is then an ordinary checkpoint)") -> None:
    """The options of a run on a base (``finetune``, ``dpo``): --ckpt, the LoRA settings, --full,
    ``training_flags`` (rows of train's ``FLAGS``), --resume / --strict-resume / --overwrite."""
    p.add_argument("--ckpt", required=True, help="the base: a run or checkpoint directory (never written)")
    p.add_argument("--lora-rank", type=int, default=4, help="adapter rank r (4)")
    p.add_argument("--lora-alpha", type=float, default=None, help="adapter alpha; the update is scaled by alpha / r "
                                                                  "(default: alpha = r)")
    p.add_argument("--lora-targets", choices=LORA_TARGETS, default="attn+conv",
                   help="the layers adapted: attn (attention projections), attn+conv (plus every convolution / "
                        "DiT MLP; default), all (every linear and convolution layer)")
    p.add_argument("--full", action="store_true", help=full_help)
    for f in training_flags:
        f.add_to(p)
    add_run_options(p, "continue the run in --out (adapters, their EMA, optimizer state and step)")


def add_run_options(p, resume_help: str) -> None:
    """--resume, --strict-resume and --overwrite of a run on a base (``finetune``, ``dpo``, ``distill``)."""
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--strict-resume", action="store_true", help="with --resume: stop at a damaged newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def param_flags(p) -> dict:
    return options.param_flags(p, {**PARAMS, "lora_rank": "--lora-rank", "lora_alpha": "--lora-alpha",
                                   "lora_targets": "--lora-targets"})


def run(a) -> int:
    from ...training.finetune import finetune_config

    return start(a, lambda fields: finetune_config(a.ckpt, full=a.full, rank=a.lora_rank, alpha=a.lora_alpha,
                                                   targets=a.lora_targets, **fields))


def start(a, build) -> int:
    """Check the run flags, build the config (``build(fields)`` of the given training flags) and
    train it on the one trainer."""
    from ...training import Trainer

    cfg = build(training_fields(a, "the adapter (or of the --full model)"))
    trainer = Trainer(config=cfg, resume=a.resume, overwrite=a.overwrite, strict_resume=a.strict_resume)
    _same_base(trainer.cfg, cfg)
    summary = trainer.train()
    print(json.dumps(summary, indent=2))
    return options.finished(a.command, summary)


def training_fields(a, out: str) -> dict:
    """The run flags checked (``out``: what --out holds) and the given training flags as config fields."""
    if a.strict_resume and not a.resume:
        raise UserError("--strict-resume applies to --resume")
    if a.out is None:
        raise UserError(f"--out is required: the folder of {out}")
    if a.steps is None and a.time_budget is None:
        raise UserError("give --steps N or --time-budget SECONDS")
    return {f.field: (f.convert(v) if f.convert else v) for f in TRAINING_FLAGS
            if hasattr(a, f.dest) and (v := getattr(a, f.dest)) is not None}


def _same_base(run_cfg, asked) -> None:
    """A resumed run continues on the base it started from: --ckpt must name that base."""
    if run_cfg.finetune is None or run_cfg.finetune.base_sha256 != asked.finetune.base_sha256:
        raise UserError(f"the run in {run_cfg.out_dir} fine-tunes "
                        f"{run_cfg.finetune.base if run_cfg.finetune else 'nothing (an ordinary run)'}, "
                        f"not {asked.finetune.base}", param="ckpt")
