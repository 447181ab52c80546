"""The option groups the subcommands share, each written once: checkpoint, sampling, guidance,
output and precision. Every ``choices`` comes from a library registry, so a sampler, process or
encoder added there shows up here without an edit."""
from __future__ import annotations

import argparse
import math

from ...core.guidance import THRESHOLDS
from ...core.likelihood import VLB_VARIANCES
from ...core.samplers import SAMPLERS

SAMPLER_HELP = ("a registered sampler (`diffusionlab samplers`), or auto: the checkpoint's recorded sampler, "
                "else its process's, else ddim")
STEPS_HELP = "grid intervals (default: the checkpoint's recorded steps, else its process's, else 50)"
PRECISIONS = ("auto", "fp32", "bf16")

# library parameters fed by a flag of another name (the rest: the flag whose dest is the parameter)
GUIDANCE_PARAMS = {"rescale": "--guidance-rescale", "interval": "--guidance-interval", "weight": "--autoguidance"}


def positive_int(s: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is exit 2 naming the flag)."""
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {s}")
    return v


def nonneg_int(s: str) -> int:
    """An argparse type: an integer >= 0."""
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s}")
    return v


def floats(s: str) -> tuple:
    """``"0.1,50"`` -> (0.1, 50.0)."""
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def ints(s: str) -> tuple:
    """``"1,2,2"`` -> (1, 2, 2)."""
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def weight(s: str) -> float:
    """A finite number >= 0 (a guidance weight)."""
    try:
        w = float(s)
    except ValueError:
        w = math.nan
    if not math.isfinite(w) or w < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return w


def param_flags(p: argparse.ArgumentParser, extra: dict | None = None) -> dict:
    """Library parameter -> the flag of ``p`` that feeds it: every option's dest names the
    parameter of the same name; ``extra`` adds the parameters named otherwise."""
    flags = {}
    for action in p._actions:  # argparse keeps no public list of a parser's options
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in flags:
            flags[action.dest] = longs[0]
    return {**flags, **GUIDANCE_PARAMS, **(extra or {})}


def add_checkpoint(p, ema: bool = True, help: str = "run directory or checkpoint directory",
                   required: bool = True) -> None:
    p.add_argument("--ckpt", required=required, help=help)
    p.add_argument("--autoencoder", default=None, help="latent models: a moved copy of the autoencoder they were "
                                                       "trained on (accepted when its content hash matches)")
    if ema:
        p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--trust-pickle", action="store_true",
                   help="a diffusers folder with pickled .bin weights: unpickle them (this can run code from the "
                        "file; safetensors folders never need it)")
    add_lora(p)


def add_lora(p) -> None:
    """--lora PATH[:WEIGHT] (repeatable), --lora-scale, --force: LoRA adapters on the checkpoint."""
    p.add_argument("--lora", action="append", default=None, metavar="PATH[:WEIGHT]",
                   help="a LoRA adapter folder (`diffusionlab finetune` writes one) applied to --ckpt with this "
                        "weight (default 1; read from the right, so paths may hold colons); repeat to stack "
                        "adapters: --lora A:0.5 --lora B:1")
    p.add_argument("--lora-scale", type=float, default=1.0, metavar="S",
                   help="multiplies every adapter's weight (0: the base model, bitwise)")
    p.add_argument("--force", action="store_true",
                   help="apply adapters trained on another base (refused by default: their recorded content hash "
                        "differs from --ckpt's)")


def checkpoint_args(a) -> dict:
    """The ``load_denoiser`` keywords of --lora / --lora-scale / --force / --trust-pickle."""
    return {"lora": tuple(a.lora or ()), "lora_scale": getattr(a, "lora_scale", 1.0),
            "force": getattr(a, "force", False), "trust_pickle": getattr(a, "trust_pickle", False)}


def add_digits(p) -> None:
    """--digits: select classes of the data (for every command that takes --data)."""
    p.add_argument("--digits", type=ints, default=None, metavar="K[,K...]",
                   help="only these classes of the data, e.g. 3 or 3,5 (the digit itself for mnist / digits; a "
                        "folder's classes in sorted order)")


def add_sampling(p, batch_size: int, seed_help: str = "sample i uses seed stream i of this seed") -> None:
    """--sampler, --steps, --seed, --batch-size."""
    p.add_argument("--sampler", default="auto", choices=["auto", *SAMPLERS], metavar="NAME", help=SAMPLER_HELP)
    p.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    p.add_argument("--seed", type=nonneg_int, default=0, help=seed_help)
    p.add_argument("--batch-size", type=positive_int, default=batch_size)


def add_sampler_knobs(p, variance_help: str = "DDPM variance (auto: learned for a learned-variance model, "
                                              "else small)") -> None:
    """--schedule, --opt, --eta, --variance: the sampler's own settings."""
    p.add_argument("--schedule", default="auto",
                   help="the sigma grid: auto (measured per model kind and sampler; README 'Sampling defaults') | "
                        "trailing | leading | linspace | karras | exponential | logsnr | tuned | flow | ladder (ncsn)")
    p.add_argument("--shift", type=float, default=None, metavar="S",
                   help="the 'flow' grid's resolution shift, sigma' = S sigma (default: the model's; 1 unless a flow "
                        "model was trained with --shift)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler knob, repeatable, e.g. --opt order=2 --opt variant=bh1 --opt s_churn=40 "
                        "(see `diffusionlab samplers -v`)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic); --sampler ddim")
    p.add_argument("--variance", choices=VLB_VARIANCES, default=None, help=variance_help)


def add_output(p, default: str, what: str = "samples") -> None:
    """--out (a PNG grid) and --npy."""
    p.add_argument("--out", default=default, help="PNG grid path")
    p.add_argument("--npy", default=None, help=f"also save the {what} (float32 [N, C, H, W] in [-1, 1])")


def add_precision(p, default: str | None = "auto", help: str = "sampling precision") -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=f"{help}: auto (bf16 where the CPU has it natively, else fp32) or forced")


def add_guidance(p) -> None:
    """Thresholding, autoguidance, classifier-free and classifier guidance."""
    p.add_argument("--threshold", choices=THRESHOLDS, default="none",
                   help="x0 thresholding at every step: clip to [-1, 1] (DDPM's clip_denoised) or Imagen's "
                        "dynamic thresholding (--threshold-p); changes the sampled distribution")
    p.add_argument("--threshold-p", type=float, default=0.995, help="dynamic thresholding percentile")
    p.add_argument("--autoguidance", type=weight, default=1.0, metavar="W",
                   help="autoguidance weight (Karras et al. 2024): guide + W (model - guide); 1 = off. Each step "
                        "evaluates both networks")
    p.add_argument("--guide", default=None, metavar="CKPT",
                   help="the guide for --autoguidance: another checkpoint (default: the guide snapshot stored "
                        "in --ckpt by train --guide-at)")
    _add_cfg(p.add_argument_group("conditional models (train --cond class | text): classifier-free guidance"))


def _add_cfg(c) -> None:
    c.add_argument("--class", dest="class_", default=None, metavar="K",
                   help="class models: the class to draw, an index or a class name (default: the null label, "
                        "unconditional)")
    c.add_argument("--prompt", default=None, metavar="TEXT",
                   help="text models: the prompt (at most 1,024 characters; \"\" is the empty prompt = the null "
                        "condition; default: the null condition)")
    c.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="text models: steer away from this prompt (it replaces the null condition in CFG)")
    c.add_argument("--guidance", type=float, default=None, metavar="S",
                   help="classifier-free guidance scale s = 1 + w (the seeds' w): 1 = the conditional model, "
                        "0 = the unconditional one; default: the checkpoint's recorded value, else 1")
    c.add_argument("--negative-class", default=None, metavar="K",
                   help="class models: steer away from this class (it replaces the null label in CFG)")
    _add_classifier(c)
    c.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                   help="guidance rescale (Lin et al. 2023), 0..1; 0 = plain CFG")
    c.add_argument("--guidance-interval", type=floats, default=None, metavar="LO,HI",
                   help="guide only for sigma in (LO, HI] (Kynkaanniemi et al. 2024)")


def _add_classifier(c) -> None:
    c.add_argument("--classifier", default=None, metavar="CLS",
                   help="classifier guidance (Dhariwal & Nichol 2021) toward --class with the noise-aware classifier "
                        "in CLS (train-classifier); works on unconditional models and composes with CFG")
    c.add_argument("--classifier-scale", type=float, default=None, metavar="S",
                   help="classifier guidance scale: x0 + S sigma^2 grad log p(class | x, sigma) (default 1)")
    c.add_argument("--classifier-sigma-max", type=float, default=None, metavar="SIGMA",
                   help="classifier guidance only at sigma <= SIGMA (default 30: above it a learned classifier's "
                        "gradient times sigma^2 grows with sigma and wrecks the first steps)")


def finished(command: str, summary: dict) -> int:
    """The exit status of a command on the trainer from its summary: 0 when it completed; a run
    stopped by Ctrl-C or SIGTERM has written its checkpoint and says so in one line, then exits
    130 / 143 (the exit-code table)."""
    import sys

    from ...errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED

    status = summary.get("status")
    if status not in ("interrupted", "terminated"):
        return EXIT_OK
    print(f"diffusionlab {command}: {status} at step {summary.get('steps')}; checkpoint {summary.get('checkpoint')} "
          "written; continue with --resume", file=sys.stderr)
    return EXIT_INTERRUPTED if status == "interrupted" else EXIT_TERMINATED
