"""Command line: ``diffusionlab train | sample | noise | eval | samplers | demo``.

User mistakes (bad paths, bad flags, damaged checkpoints) print one readable line and a hint
and exit with status 2; bugs still show a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
from pathlib import Path


def _floats(s: str) -> tuple:
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}")


def _ints(s: str) -> tuple:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def _add_train(sub):
    p = sub.add_parser("train", help="train a diffusion model",
                       description="Train a U-Net diffusion model on MNIST-5k, the 8x8 digits or a folder of images.")
    p.add_argument("--preset", choices=["default", "demo", "demo-text", "tiny"], default=None,
                   help="start from a preset config (default: `default`, training.config.default_config); "
                        "demo-text is `make demo`'s text-to-image run")
    p.add_argument("--data", help="mnist | digits | path/to/image/folder (default mnist)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 (greyscale) or 3 (RGB)")
    p.add_argument("--hflip", action="store_true", default=None, help="random horizontal flips")
    p.add_argument("--arch", default=None,
                   help="the network, a name of nn.NETWORKS: unet (default) or dit (starts from nn.dit_demo_model: "
                        "patch 4, width 256, depth 4); --dim ... set the U-Net, --hidden ... the DiT")
    p.add_argument("--hidden", type=int, help="dit: width")
    p.add_argument("--depth", type=int, help="dit: transformer blocks")
    p.add_argument("--heads", type=int, help="dit: attention heads")
    p.add_argument("--patch-size", type=int, help="unet, dit: pixels per patch side")
    p.add_argument("--dim", type=int, help="U-Net base width")
    p.add_argument("--dim-mults", type=_ints, help="e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--block", choices=["resnet", "convnext"])
    p.add_argument("--dropout", type=float)
    p.add_argument("--process", choices=["ddpm", "vp", "subvp", "ve", "edm", "ncsn"],
                   help="ddpm (discrete, default), vp / subvp / ve (SDEs), edm, ncsn; see README 'Processes'")
    p.add_argument("--objective", choices=["eps", "x0", "v", "score"], help="score: vp, subvp, ve only")
    p.add_argument("--schedule", help="ddpm beta schedule: linear, cosine, quadratic, sigmoid, exponential, constant")
    p.add_argument("--timesteps", type=int, help="ddpm")
    p.add_argument("--loss", choices=["l1", "l2", "huber"])
    p.add_argument("--min-snr-gamma", type=float, help="ddpm; 0 disables min-SNR weighting")
    p.add_argument("--offset-noise", type=float, help="ddpm")
    p.add_argument("--sigma-data", type=float, help="edm: data std (0.5); ddpm: EDM loss weighting with this std")
    p.add_argument("--zero-terminal-snr", action="store_true", default=None, help="ddpm")
    p.add_argument("--learned-variance", action="store_true", default=None,
                   help="ddpm: the network also outputs improved DDPM's variance channel (train with --loss-kind hybrid)")
    p.add_argument("--loss-kind", choices=["simple", "hybrid", "vlb"],
                   help="ddpm: simple (L_simple), hybrid (L_simple + lambda L_vlb; default with --learned-variance), vlb")
    p.add_argument("--vlb-weight", type=float, help="ddpm, hybrid: lambda (0.001)")
    p.add_argument("--t-sampling", choices=["uniform", "importance"],
                   help="ddpm: timestep sampling; importance = improved DDPM's, for --loss-kind vlb")
    p.add_argument("--beta-min", type=float, help="vp, subvp (0.1)")
    p.add_argument("--beta-max", type=float, help="vp, subvp (20)")
    p.add_argument("--eps-t", type=float, help="vp, subvp, ve: smallest time (1e-5; ve 0)")
    p.add_argument("--sigma-min", type=float, help="ve, ncsn (0.01), edm (0.002)")
    p.add_argument("--sigma-max", type=float, help="ve, ncsn (50), edm (80)")
    p.add_argument("--likelihood-weighting", action="store_true", default=None,
                   help="vp, subvp, ve: weight the score loss by g(t)^2")
    p.add_argument("--p-mean", type=float, help="edm: mean of ln sigma in training (-1.2)")
    p.add_argument("--p-std", type=float, help="edm: std of ln sigma in training (1.2)")
    p.add_argument("--ncsn-levels", type=int, help="ncsn: ladder length (default from the image size)")
    p.add_argument("--steps", type=int, dest="max_steps", help="optimizer steps")
    p.add_argument("--time-budget", type=float, help="seconds of training (validation/sampling excluded)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"])
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--cond", choices=["none", "class", "text", "image"],
                   help="class: condition on the data's labels (embedded sets; folders with one sub-folder per "
                        "class or a labels.csv); text: on captions (the embedded digits' are made from their "
                        "labels; folders need a captions.jsonl), by cross-attention; image: on an image made "
                        "from each training image (--task superres), concatenated to the input; all with a "
                        "null condition for CFG")
    p.add_argument("--task", choices=["superres"],
                   help="image: superres (SR3): condition on the image area-downsampled to --lowres and "
                        "bicubic-upsampled back; sample with `diffusionlab upscale`")
    p.add_argument("--lowres", type=int, help="image, superres: the low-resolution side (e.g. 16 for 32x32 images)")
    p.add_argument("--text-encoder", choices=["minilm", "small"],
                   help="text: minilm (frozen all-MiniLM-L6-v2, offline; default) or small (a byte-level "
                        "transformer trained with the network)")
    p.add_argument("--p-uncond", type=float, help="class / text / image: conditioning dropout, the null condition's "
                   "share (0.1)")
    p.add_argument("--guidance", type=float, help="class / text: the CFG scale recorded as the checkpoint's "
                   "sampling default")
    p.add_argument("--guide-at", type=float,
                   help="keep the EMA weights at this fraction of training (e.g. 0.3) as the autoguidance "
                        "guide (sample --autoguidance W)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device")
    p.add_argument("--threads", type=int, dest="num_threads")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", dest="out_dir", help="run directory")
    p.add_argument("--sample-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--eval-every", type=int, help="sample-quality evaluation every N steps (metrics.jsonl, eval.png)")
    p.add_argument("--eval-n", type=int, help="samples per evaluation (500)")
    p.add_argument("--eval-steps", type=int, help="sampler steps per evaluation (20)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest intact checkpoint (damaged newer ones are "
                        "renamed aside as step-N.damaged, with a message)")
    p.add_argument("--strict-resume", action="store_true",
                   help="with --resume: stop at a damaged newest checkpoint instead of falling back")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (its checkpoints, metrics, samples); without it, "
                        "training into a folder that holds checkpoints is refused")
    p.add_argument("--no-progress", action="store_true")


def _train_config(a):
    from ..training import PRESETS

    cfg = PRESETS[a.preset or "default"]()  # no --preset: the explicit default preset
    top = {k: getattr(a, k) for k in ("cond", "task", "lowres", "text_encoder", "p_uncond", "guidance", "arch", "data", "image_size", "hflip", "max_steps", "time_budget", "batch_size",
                                      "grad_accum", "lr", "warmup_steps", "lr_schedule", "grad_clip", "ema_decay", "guide_at",
                                      "precision", "device", "num_threads", "seed", "out_dir", "sample_every",
                                      "checkpoint_every", "val_every", "eval_every", "eval_n", "eval_steps")
           if getattr(a, k) is not None}
    arch = a.arch or cfg.arch
    if arch != cfg.arch:  # another network: its own demo-sized config, channels kept
        from ..nn import NETWORKS, dit_demo_model

        if arch not in NETWORKS:
            raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(NETWORKS)}")
        cfg = dataclasses.replace(cfg, arch=arch, model=dit_demo_model(channels=cfg.model.channels))
    own = {"unet": ("dim", "dim_mults", "num_res_blocks", "block", "dropout"), "dit": ("hidden", "depth", "heads")}
    for other, names in own.items():
        given = [n for n in names if getattr(a, n) is not None]
        if other != arch and given:
            raise ValueError(f"--{given[0].replace('_', '-')} sets the {other} network, not --arch {arch}")
    model = {k: getattr(a, k) for k in (*own.get(arch, ()), "channels", "learned_variance", "patch_size")
             if getattr(a, k) is not None}
    diff = {k2: getattr(a, k1) for k1, k2 in (("objective", "objective"), ("schedule", "beta_schedule"),
                                              ("timesteps", "timesteps"), ("loss", "loss_type"),
                                              ("offset_noise", "offset_noise"), ("sigma_data", "sigma_data"),
                                              ("zero_terminal_snr", "zero_terminal_snr"),
                                              ("loss_kind", "loss_kind"), ("vlb_weight", "vlb_weight"),
                                              ("t_sampling", "t_sampling"))
            if getattr(a, k1) is not None}
    if a.min_snr_gamma is not None:
        diff["min_snr_gamma"] = a.min_snr_gamma or None
    diff.update(_process_flags(a, a.process or cfg.diffusion.process))
    if a.learned_variance and "loss_kind" not in diff:
        diff["loss_kind"] = "hybrid"
    if top.get("data") not in (None, "mnist", "digits") and "channels" not in model:
        model["channels"] = 3
    from ..models.processes import for_process

    base = for_process(cfg.diffusion, a.process) if a.process and a.process != cfg.diffusion.process else cfg.diffusion
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model),
                              diffusion=dataclasses.replace(base, **diff), **top)
    if a.no_progress:
        cfg = dataclasses.replace(cfg, progress=False)
    return cfg


# CLI flags named differently from their DiffusionConfig field (processes.PROCESS_FIELDS says which
# process reads which field; --learned-variance is the network's, for ddpm only)
FLAG_OF_FIELD = {"beta_schedule": "schedule"}


def _process_flags(a, process: str) -> dict:
    """The process and its own settings; a setting of another process is a user error."""
    from ..models.processes import PROCESS_FIELDS

    checks = [(FLAG_OF_FIELD.get(f, f), procs) for f, procs in PROCESS_FIELDS.items()] + [("learned_variance", ("ddpm",))]
    for flag, procs in checks:
        if getattr(a, flag, None) is not None and process not in procs:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --process {' / '.join(procs)}, not {process}")
    if a.objective == "score" and process == "ddpm":
        raise ValueError("--objective score applies to --process vp / subvp / ve")
    out = {k: getattr(a, k) for k in ("beta_min", "beta_max", "eps_t", "sigma_min", "sigma_max",
                                      "likelihood_weighting", "p_mean", "p_std", "ncsn_levels")
           if getattr(a, k) is not None}
    if a.process is not None:
        out["process"] = a.process
    return out


def cmd_train(a) -> int:
    from ..training import Trainer

    cfg = _train_config(a)
    if a.strict_resume and not a.resume:
        raise ValueError("--strict-resume applies to --resume")
    summary = Trainer(config=cfg, resume=a.resume, overwrite=a.overwrite, strict_resume=a.strict_resume).train()
    print(json.dumps(summary, indent=2))
    return 0


def _add_guidance(p):
    from ..core.guidance import THRESHOLDS

    p.add_argument("--threshold", choices=THRESHOLDS, default="none",
                   help="x0 thresholding at every step: clip to [-1, 1] (DDPM's clip_denoised) or Imagen's "
                        "dynamic thresholding (--threshold-p); changes the sampled distribution")
    p.add_argument("--threshold-p", type=float, default=0.995, help="dynamic thresholding percentile")
    p.add_argument("--autoguidance", type=float, default=1.0, metavar="W",
                   help="autoguidance weight (Karras et al. 2024): guide + W (model - guide); 1 = off. Each step "
                        "evaluates both networks")
    p.add_argument("--guide", default=None, metavar="CKPT",
                   help="the guide for --autoguidance: another checkpoint (default: the guide snapshot stored "
                        "in --ckpt by train --guide-at)")
    c = p.add_argument_group("conditional models (train --cond class | text): classifier-free guidance")
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
    c.add_argument("--classifier", default=None, metavar="CLS",
                   help="classifier guidance (Dhariwal & Nichol 2021) toward --class with the noise-aware classifier "
                        "in CLS (train-classifier); works on unconditional models and composes with CFG")
    c.add_argument("--classifier-scale", type=float, default=None, metavar="S",
                   help="classifier guidance scale: x0 + S sigma^2 grad log p(class | x, sigma) (default 1)")
    c.add_argument("--classifier-sigma-max", type=float, default=None, metavar="SIGMA",
                   help="classifier guidance only at sigma <= SIGMA (default 30: above it a learned classifier's "
                        "gradient times sigma^2 grows with sigma and wrecks the first steps)")
    c.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                   help="guidance rescale (Lin et al. 2023), 0..1; 0 = plain CFG")
    c.add_argument("--guidance-interval", type=_floats, default=None, metavar="LO,HI",
                   help="guide only for sigma in (LO, HI] (Kynkaanniemi et al. 2024)")


def _add_sample(sub):
    p = sub.add_parser("sample", help="sample images from a checkpoint")
    p.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--sampler", default="auto",
                   help="a registered sampler, or auto: the model's own (EDM heun, NCSN annealed_langevin) else ddim")
    p.add_argument("--steps", type=int, default=None, help="grid intervals (default: the model's own, else 50)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic)")
    p.add_argument("--variance", choices=["auto", "small", "large", "learned"], default=None,
                   help="DDPM variance (auto: learned for a learned-variance model, else small)")
    p.add_argument("--schedule", default="auto",
                   help="auto | trailing | leading | linspace | karras | exponential | logsnr | ladder (ncsn)")
    p.add_argument("--sigma-min", type=float, default=None, help="grid's smallest positive sigma (karras/exponential)")
    p.add_argument("--sigma-max", type=float, default=None, help="grid's largest sigma (karras/exponential)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler knob, repeatable, e.g. --opt order=2 --opt variant=bh1 --opt s_churn=40 "
                        "(see `diffusionlab samplers`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="samples.png", help="grid PNG path")
    p.add_argument("--gif", default=None, help="also write the reverse process as a GIF (first batch)")
    p.add_argument("--npy", default=None, help="also save the samples in [-1, 1] as .npy")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    _add_guidance(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")


def _parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(v)
    return v


def _sampler_knobs(a) -> dict:
    import inspect

    from ..core.samplers import SAMPLERS

    knobs = {}
    for item in getattr(a, "opt", None) or []:
        if "=" not in item:
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        knobs[k.strip().replace("-", "_")] = _parse_value(v.strip())
    if knobs and a.sampler in SAMPLERS:
        params = inspect.signature(SAMPLERS[a.sampler].fn).parameters
        allowed = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY
                   and n not in ("cond", "generator", "callback")]
        bad = sorted(set(knobs) - set(allowed))
        if bad:
            raise ValueError(f"sampler {a.sampler!r} has no knob(s) {bad}; its knobs: {allowed}")
    if a.eta is not None:
        if a.sampler != "ddim":
            raise ValueError("--eta applies to --sampler ddim")
        knobs["eta"] = a.eta
    if a.variance is not None:
        if a.sampler != "ddpm":
            raise ValueError("--variance applies to --sampler ddpm")
        knobs["variance"] = a.variance
    return knobs


def _load(a):
    import torch

    from ..core.denoiser import info_of
    from ..core.devices import pick_precision
    from ..models.loading import load_denoiser
    from ..core.samplers import SAMPLERS

    if a.sampler != "auto" and a.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {a.sampler!r}; run `diffusionlab samplers` for the list")
    dtype = pick_precision(a.precision, torch.device("cpu"))
    den = load_denoiser(a.ckpt, use_ema=not getattr(a, "no_ema", False), autocast_dtype=dtype)
    den = _classifier_free(a, den)
    w = getattr(a, "autoguidance", 1.0)
    if getattr(a, "guide", None) is not None and w == 1.0:
        raise ValueError("--guide is only used with --autoguidance W (W != 1)")
    if w != 1.0:
        from ..core.guidance import autoguidance

        guide = (load_denoiser(a.guide, autocast_dtype=dtype) if a.guide is not None
                 else load_denoiser(a.ckpt, autocast_dtype=dtype, weights="guide"))
        den = autoguidance(den, guide, w)
    info = info_of(den)
    if a.sampler == "auto":
        a.sampler = info.default_sampler if info.default_sampler in SAMPLERS else "ddim"
    if a.steps is None:
        a.steps = info.default_steps or 50
    from ..core.guidance import threshold

    return threshold(den, getattr(a, "threshold", "none"), getattr(a, "threshold_p", 0.995))


def _classifier_free(a, den):
    """The class / prompt flags and CFG (``pipelines.conditioning.conditioned``): records the
    sample condition in ``a.conditioning`` and returns the guided denoiser."""
    from ..pipelines.conditioning import conditioned

    classifier = None
    if getattr(a, "classifier", None) is not None:
        from ..training.classifier import load_classifier

        classifier = load_classifier(a.classifier)
    elif getattr(a, "classifier_scale", None) is not None or getattr(a, "classifier_sigma_max", None) is not None:
        raise ValueError("--classifier-scale / --classifier-sigma-max need --classifier CLS")
    den, a.conditioning = conditioned(den, class_=a.class_, prompt=getattr(a, "prompt", None),
                                      negative_class=a.negative_class, negative_prompt=getattr(a, "negative_prompt", None),
                                      guidance=a.guidance, rescale=a.guidance_rescale, interval=a.guidance_interval,
                                      classifier=classifier, classifier_scale=getattr(a, "classifier_scale", None) or 1.0,
                                      **({"classifier_sigma_max": a.classifier_sigma_max}
                                         if getattr(a, "classifier_sigma_max", None) is not None else {}))
    return den


def _sampling_cond(a, den, n: int):
    """The condition of n samples: the asked class or prompt, the null one of a conditional model, else None."""
    return a.conditioning(n)


def cmd_sample(a) -> int:
    import math

    import numpy as np
    import torch

    from ..core.denoiser import info_of
    from ..core.rng import per_sample_generators
    from ..core.sampling import sample
    from ..evaluation.viz import save_gif, save_grid

    den = _load(a)
    knobs = _sampler_knobs(a)
    shape = info_of(den).image_shape
    if a.n < 1:
        raise ValueError("--n must be at least 1")
    out, frames = [], []
    for start in range(0, a.n, a.batch_size):
        idx = range(start, min(a.n, start + a.batch_size))
        gens = per_sample_generators(a.seed, idx)
        cb = None
        if a.gif and start == 0:
            def cb(d):
                frames.append((d["x"] / math.sqrt(1 + d["sigma_next"] ** 2)).float())
        out.append(sample(den, (len(idx), *shape), sampler=a.sampler, steps=a.steps, schedule=a.schedule,
                          cond=_sampling_cond(a, den, len(idx)),
                          sigma_min=a.sigma_min, sigma_max=a.sigma_max, generator=gens, callback=cb,
                          **knobs).float())
    x = torch.cat(out)
    save_grid(x, a.out, nrow=int(math.ceil(math.sqrt(min(a.n, 256)))), upscale=2) if a.n <= 256 else \
        save_grid(x[:256], a.out, nrow=16, upscale=2)
    if a.gif:
        save_gif(frames, a.gif, nrow=int(math.ceil(math.sqrt(len(frames[0])))))
    if a.npy:
        write_npy(a.npy, x)
    print(f"wrote {a.out}" + (f", {a.gif}" if a.gif else "") + (f", {a.npy}" if a.npy else ""))
    return 0


def write_npy(path, x) -> None:
    """The one ``--npy`` format (what the pipelines read back): float32 [N, C, H, W] clamped to
    [-1, 1], written atomically."""
    import io

    import numpy as np

    from ..core.files import atomic_write

    arr = np.ascontiguousarray(x.detach().float().clamp(-1, 1).cpu().numpy(), dtype=np.float32)
    if arr.ndim != 4:
        raise ValueError(f"--npy writes [N, C, H, W] images, got shape {arr.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write(path, buf.getvalue())


def _add_pipeline_common(p, size: str = "the model's size; 28x28 inputs to a 32x32 model are padded like MNIST"):
    p.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    p.add_argument("--input", required=True,
                   help="an image file, a folder of images, or a .npy batch (float32 [N, C, H, W] in [-1, 1], what "
                        f"`sample --npy` writes); {size}")
    p.add_argument("--sampler", default="auto", help="a registered sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="grid steps (default: the checkpoint's, else 50)")
    p.add_argument("--seed", type=int, default=0, help="input i uses seed stream i of this seed")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="out.png", help="PNG grid of the outputs, in input order")
    p.add_argument("--npy", default=None, help="also save the outputs (float32 [N, C, H, W] in [-1, 1])")
    p.add_argument("--no-ema", action="store_true")
    _add_guidance(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")


def _add_train_classifier(sub):
    p = sub.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance",
                       description="Train a classifier of p(class | x, sigma) on noised labelled images, sigma "
                                   "log-uniform over a model's range, for `sample --classifier CLS --class K`.")
    p.add_argument("--data", default="mnist", help="mnist | digits | a labelled folder")
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default=None, help="take the sigma range from this model (default 0.002..160)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 2000 without --time-budget)")
    p.add_argument("--time-budget", type=float, default=None, help="training seconds")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def cmd_train_classifier(a) -> int:
    from ..training.classifier import train_classifier

    rng = {}
    if a.ckpt:
        from ..models.loading import load_denoiser

        info = load_denoiser(a.ckpt).info
        rng = {"sigma_min": info.sigma_min, "sigma_max": info.finite_sigma_max(),
               "image_size": info.image_shape[-1], "channels": info.image_shape[0]}
    steps = a.steps if a.steps is not None or a.time_budget is not None else 2000
    meta = train_classifier(a.data, a.out, steps, a.time_budget, batch_size=a.batch_size, seed=a.seed,
                            overwrite=a.overwrite, **{"image_size": a.image_size, "channels": a.channels, **rng})
    print(json.dumps({k: meta[k] for k in ("steps", "seconds", "heldout_accuracy_at_sigma")}, indent=2))
    return 0


def _add_pipelines(sub):
    p = sub.add_parser("img2img", help="SDEdit: noise the inputs part of the way and denoise them back",
                       description="img2img by SDEdit (Meng et al. 2022): with N steps on the model's grid, the input "
                                   "is noised to the sigma where the last round(S * N) steps begin, and those steps "
                                   "run. --strength 0 returns the input, 1 ignores it.")
    _add_pipeline_common(p)
    p.add_argument("--strength", type=float, required=True, metavar="S", help="0..1")
    from ..pipelines.inpaint import DEFAULT_JUMP, DEFAULT_RECONSTRUCTION, DEFAULT_RESAMPLE

    p = sub.add_parser("inpaint", help="fill a masked region with any model (RePaint)",
                       description="Inpainting by RePaint (Lugmayr et al. 2022): the known region is replaced by the "
                                   "input re-noised to the current sigma at every step, and every J steps the image "
                                   "is noised back J steps and re-denoised, R passes in all; reconstruction "
                                   "guidance pulls the denoised image toward the known pixels. The known region of "
                                   "the output equals the input exactly.")
    _add_pipeline_common(p)
    p.add_argument("--mask", required=True,
                   help="left|right|top|bottom (that half is filled), a rectangle x0,y0,x1,y1 (half-open model "
                        "pixels, x = column), or a PNG of the model's size (white = fill)")
    p.add_argument("--jump-length", type=int, default=DEFAULT_JUMP, metavar="J",
                   help=f"RePaint jump length (default {DEFAULT_JUMP}; the paper's 10)")
    p.add_argument("--resample", type=int, default=DEFAULT_RESAMPLE, metavar="R",
                   help=f"RePaint passes per jump (default {DEFAULT_RESAMPLE}; 1 = no resampling; the paper's 10): "
                        "the network runs about R x steps times per input. Measured on 32x32 digits, 16 steps, a "
                        "2-core AMX CPU (bench/RESULTS_pipelines.md), seconds per 100 inputs: J 5 R 3 with the "
                        "default reconstruction guidance about 9 (without: 5), R 1 about 3 (without: 2), J 10 R 10 "
                        "about 12-15 without")
    p.add_argument("--reconstruction", type=float, default=DEFAULT_RECONSTRUCTION, metavar="W",
                   help=f"reconstruction guidance weight (default {DEFAULT_RECONSTRUCTION:g}; 0 = RePaint alone): "
                        "pulls the denoised image toward the known pixels through the network's gradient, which "
                        "makes the fill agree with the known region (held-out digit agreement with J 5 R 3, "
                        "left / right half masked: 0.70 / 0.75 without, 0.84 / 0.90 with; "
                        "bench/RESULTS_pipelines.md) at one extra backward pass per step; off below sigma 0.5")
    p = sub.add_parser("upscale", help="super-resolution with a model trained with --cond image --task superres",
                       description="Super-resolution by image conditioning (SR3, Saharia et al. 2021): each "
                                   "low-resolution input (the checkpoint's --lowres size, e.g. 16x16) is bicubic-"
                                   "upsampled, concatenated to the model's noisy input, and the model samples the "
                                   "full-resolution image.")
    _add_pipeline_common(p, "the checkpoint's low-resolution size (16x16 for --lowres 16); with --degrade, "
                            "full-size images (28x28 padded like MNIST) downsampled first")
    p.add_argument("--degrade", action="store_true",
                   help="the inputs are full-size images: area-downsample them to the low resolution first "
                        "(to compare an upscaled digit with its original)")
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="draw K samples per input and output their mean (sharper with 1, closer to the "
                        "original in PSNR with more)")


def _run_pipeline(a, fn, size=None, hint: str = "") -> int:
    import torch

    from ..evaluation.viz import save_grid
    from ..pipelines.inputs import load_inputs

    den = _load(a)
    shape = den.info.image_shape
    x = load_inputs(a.input, shape, size(den) if size else None, hint)
    cond = a.conditioning(len(x))
    with torch.no_grad():
        out = fn(den, x, cond)
    save_grid(out, a.out, nrow=max(1, int(math.ceil(math.sqrt(len(out))))), upscale=2)
    if a.npy:
        write_npy(a.npy, out)
    print(f"wrote {a.out}" + (f", {a.npy}" if a.npy else "") + f" ({len(out)} image(s))")
    return 0


def cmd_img2img(a) -> int:
    from ..pipelines.img2img import img2img

    if not 0.0 <= a.strength <= 1.0:
        raise ValueError(f"--strength is in [0, 1] (0 returns the input, 1 ignores it), got {a.strength:g}")
    return _run_pipeline(a, lambda den, x, cond: img2img(den, x, a.strength, a.steps, a.sampler, cond, a.seed,
                                                         a.batch_size))


def cmd_inpaint(a) -> int:
    from ..pipelines.inpaint import inpaint, parse_mask

    def run(den, x, cond):
        mask = parse_mask(a.mask, den.info.image_shape)
        return inpaint(den, x, mask, a.steps, a.sampler, cond, a.seed, a.jump_length, a.resample, a.batch_size,
                       reconstruction=a.reconstruction)

    return _run_pipeline(a, run)


def cmd_upscale(a) -> int:
    from ..data.degrade import downsample
    from ..pipelines.upscale import lowres_size, upscale

    def run(den, x, cond):
        low = downsample(x, lowres_size(den)) if a.degrade else x
        return upscale(den, low, a.steps, a.sampler, a.seed, a.samples, a.batch_size)

    if a.degrade:
        return _run_pipeline(a, run)
    return _run_pipeline(a, run, size=lowres_size, hint=" (the low resolution; for full-size images add --degrade)")


def _add_noise(sub):
    p = sub.add_parser("noise", help="forward-noising strip of an image (the seeds' cat example)")
    p.add_argument("--image", default="cat", help="cat (scikit-image photo) | mnist | path/to/image")
    p.add_argument("--t", type=_ints, default=(0, 50, 100, 150, 199), help="timesteps, e.g. 0,50,100,150,199")
    p.add_argument("--timesteps", type=int, default=200)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="noising.png")


def _image_tensor(spec: str, size: int):
    import numpy as np
    import torch
    from PIL import Image

    if spec == "mnist":
        from ..data import load_mnist
        return load_mnist("heldout", size)[0]
    if spec == "cat":
        try:
            from skimage import data as skdata
        except ImportError:
            raise ValueError("the cat photo comes from scikit-image: pip install scikit-image")
        img = Image.fromarray(skdata.chelsea())
    else:
        if not Path(spec).is_file():
            raise FileNotFoundError(f"no such image file: {spec}")
        try:
            img = Image.open(spec).convert("RGB")
        except Exception as e:
            raise ValueError(f"cannot read image {spec}: {e}")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size), Image.LANCZOS)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(arr).permute(2, 0, 1)


def cmd_noise(a) -> int:
    import torch

    from ..core.schedules import DiscreteSchedule
    from ..evaluation.viz import save_noising_strip

    sched = DiscreteSchedule.from_name(a.schedule, a.timesteps)
    bad = [t for t in a.t if not 0 <= t <= a.timesteps]
    if bad:
        raise ValueError(f"--t values {bad} are outside 0..{a.timesteps} (t=0 is the clean image)")
    img = _image_tensor(a.image, a.size)
    save_noising_strip(img, sched.abar.float(), list(a.t), a.out, generator=torch.Generator().manual_seed(a.seed))
    print(f"wrote {a.out}")
    return 0


def _add_eval(sub):
    p = sub.add_parser("eval", help="sample quality (FD/FID, KID, precision/recall, density/coverage) or bits/dim (--nll)")
    p.add_argument("--ckpt", help="run or checkpoint directory (samples are drawn from it)")
    p.add_argument("--images", help="or images: a .npy / .npz in [-1, 1] shaped [N, C, H, W], or a folder of image files")
    p.add_argument("--n", type=int, default=None, help="samples to draw (1000), or held-out images for --nll (200)")
    p.add_argument("--sampler", default="auto",
                   help="a registered sampler, or auto: the model's own (EDM heun, NCSN annealed_langevin) else ddim")
    p.add_argument("--steps", type=int, default=None, help="grid intervals (default: the model's own, else 50)")
    p.add_argument("--schedule", default="auto")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="sampler knob, repeatable")
    _add_guidance(p)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--variance", choices=["auto", "small", "large", "learned"], default=None,
                   help="DDPM sampling variance; with --nll vlb: the model's p(x_{t-1} | x_t) variance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="sampling precision (likelihoods always run in fp32)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    q = p.add_argument_group("sample quality (FD/FID, KID, precision/recall, density/coverage)")
    q.add_argument("--extractor", choices=["digits", "inception"], default=None,
                   help="feature network: digits (greyscale default) or inception (pool3, RGB default)")
    q.add_argument("--inception-weights", default=None,
                   help="path of pt_inception-2015-12-05-6726825d.pth (or $DIFFUSIONLAB_INCEPTION_WEIGHTS)")
    q.add_argument("--reference", default=None,
                   help="real data: mnist | digits | a folder (its held-out split; default: the checkpoint's data)")
    q.add_argument("--metrics", default="fd,kid,pr,dc", help="comma list of fd, kid, pr, dc")
    q.add_argument("--kid-subsets", type=int, default=100)
    q.add_argument("--kid-subset-size", type=int, default=1000)
    q.add_argument("--image-size", type=int, default=None, help="--images given as a folder: resize to this")
    g = p.add_argument_group("likelihood (--nll): bits/dim of held-out data instead of sample quality")
    g.add_argument("--nll", choices=["vlb", "ode"], default=None,
                   help="vlb: the variational bound; ode: exact log-likelihood through the probability-flow ODE")
    g.add_argument("--data", default=None,
                   help="held-out data: default the checkpoint's dataset (its held-out split); or mnist | digits | a folder")
    g.add_argument("--vlb-t", type=int, default=None,
                   help="vlb: stratified estimate with this many t per image (default: all T terms)")
    g.add_argument("--decoder", choices=["discretized", "gaussian"], default="discretized",
                   help="vlb: L_0 decoder (discretized: 8-bit data, bits/dim; gaussian: continuous data)")
    g.add_argument("--probe", choices=["rademacher", "gaussian"], default="rademacher", help="ode: Hutchinson probe")
    g.add_argument("--probes", type=int, default=1, help="ode: probes per image")
    g.add_argument("--exact-divergence", action="store_true", help="ode: exact Jacobian trace (one backward per dimension)")
    g.add_argument("--rtol", type=float, default=1e-5, help="ode solver tolerance")
    g.add_argument("--atol", type=float, default=1e-5, help="ode solver tolerance")
    g.add_argument("--nll-batch", type=int, default=100, help="images per batch (ode: integrated as one system)")


def cmd_eval(a) -> int:
    import numpy as np
    import torch

    from ..core.denoiser import info_of
    from ..evaluation import digit_metrics, format_digit_metrics, load_digit_classifier
    from ..core.sampling import sample_many

    if bool(a.ckpt) == bool(a.images):
        raise ValueError("give exactly one of --ckpt or --images")
    if a.nll:
        return _eval_nll(a)
    from ..evaluation.suite import format_image_metrics, get_extractor, image_metrics, reference_features

    if a.n is None:
        a.n = 1000
    metrics = tuple(m for m in a.metrics.split(",") if m)
    reference = a.reference
    if a.images:
        x = _read_images(a.images, a.image_size)
    else:
        den = _load(a)
        x = sample_many(den, info_of(den).image_shape, a.n, a.sampler, a.steps, seed=a.seed, batch_size=a.batch_size,
                        cond=_sampling_cond(a, den, a.n),
                        schedule=a.schedule, **_sampler_knobs(a))
        if reference is None:
            from ..models.checkpoint import find_checkpoint, read_config
            reference = read_config(find_checkpoint(a.ckpt)).get("train", {}).get("data", "mnist")
    reference = reference or "mnist"
    channels, size = x.shape[1], x.shape[-1]
    extractor_name = a.extractor or ("digits" if channels == 1 else "inception")
    if extractor_name == "digits" and channels != 1:
        raise ValueError("the digit extractor takes greyscale images: use --extractor inception for RGB")
    kw = {"weights": a.inception_weights} if extractor_name == "inception" else {}
    ex = get_extractor(extractor_name, **kw)
    m = {}
    if extractor_name == "digits":  # the digit classifier's own readings (confidence, classes, copies)
        m.update(digit_metrics(x, ex.model))
        print(format_digit_metrics(m))
    ref = reference_features(ex, reference, "heldout", size, channels)
    from ..data.datasets import load_dataset

    train = load_dataset(reference, size, channels)[0]
    floor = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:len(x)]]
    fm = image_metrics(x, ex, ref, floor=floor, metrics=metrics, kid_subsets=a.kid_subsets,
                       kid_subset_size=a.kid_subset_size)
    m.update({("feature_" + k if k in m else k): v for k, v in fm.items()})
    m["reference"] = reference
    print(format_image_metrics(fm))
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2))
    return 0


def _read_images(spec: str, image_size: int | None):
    """Images in [-1, 1], [N, C, H, W], from a .npy / .npz (array 'images' or the first one) or
    a folder of image files (then resized to --image-size, default 32)."""
    import numpy as np
    import torch

    p = Path(spec)
    if p.is_dir():
        from ..data.folder import ImageFolderDataset

        size = image_size or 32
        files = [f for f in p.rglob("*") if f.is_file()]
        grey = all(_is_grey(f) for f in files[:20]) if files else False
        return ImageFolderDataset(p, size, channels=1 if grey else 3, allow_upscale=True).load_all()
    if not p.is_file():
        raise FileNotFoundError(f"no such file or folder: {spec}")
    arr = np.load(p)
    if isinstance(arr, np.lib.npyio.NpzFile):
        with arr:
            arr = arr["images"] if "images" in arr.files else arr[arr.files[0]]
    x = torch.from_numpy(np.asarray(arr)).float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"--images must hold [N, C, H, W] images with C = 1 or 3 in [-1, 1], got {tuple(x.shape)}")
    if x.min() < -1.01 or x.max() > 1.01:
        raise ValueError(f"--images values must lie in [-1, 1] (got {float(x.min()):.2f}..{float(x.max()):.2f})")
    return x


def _is_grey(path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("L", "1", "I;16", "LA")
    except Exception:
        return False


def _heldout(a, ckpt_cfg: dict, shape):
    """8-bit held-out images for the likelihood: the checkpoint's own data split by default."""
    import torch

    from ..data.datasets import load_dataset
    from ..core.likelihood import quantize_8bit

    train = ckpt_cfg.get("train", {})
    data = a.data or train.get("data", "mnist")
    _, val = load_dataset(data, shape[1], shape[0], train.get("val_fraction", 0.05), train.get("seed", 0))
    if tuple(val.shape[1:]) != tuple(shape):
        raise ValueError(f"data {data!r} gives images {tuple(val.shape[1:])}, the model takes {tuple(shape)}")
    if len(val) < 2:
        raise ValueError(f"data {data!r} has {len(val)} held-out image(s); bits/dim need at least 2")
    n = min(a.n or 200, len(val))
    return quantize_8bit(val[:n].to(torch.float32)), data


def _eval_nll(a) -> int:
    """``eval --nll vlb|ode``: bits/dim of held-out data (module likelihood.py)."""
    from ..core.likelihood import ode_bits_per_dim, vlb
    from ..models.loading import load_denoiser
    from ..models.checkpoint import find_checkpoint, read_config

    if a.images:
        raise ValueError("--nll measures a model on held-out data: give --ckpt, not --images")
    den = load_denoiser(a.ckpt, use_ema=True)  # fp32: likelihoods need the precision
    cfg = read_config(find_checkpoint(a.ckpt))
    x, data = _heldout(a, cfg, den.info.image_shape)
    if a.nll == "vlb":
        if a.vlb_t is not None and a.vlb_t < 1:
            raise ValueError("--vlb-t must be >= 1")
        r = vlb(den, x, t_samples=a.vlb_t, variance=a.variance or "auto", decoder=a.decoder,
                batch_size=a.nll_batch, seed=a.seed, progress=True)
        m = r.summary()
    else:
        if a.probes < 1:
            raise ValueError("--probes must be >= 1")
        r = ode_bits_per_dim(den, x, batch_size=a.nll_batch, seed=a.seed, progress=True, rtol=a.rtol, atol=a.atol,
                             exact_divergence=a.exact_divergence, probe=a.probe, n_probes=a.probes)
        m = r.summary()
    m["data"] = data
    what = (f"VLB over {m['T']} steps ({'all terms' if m['t_samples'] == m['T'] else str(m['t_samples']) + ' stratified t per image'})"
            if a.nll == "vlb" else f"probability-flow ODE ({m['nfe']} right-hand sides)")
    print(f"bits/dim = {m['bits_per_dim']:.4f} +- {m['stderr']:.4f} (standard error over {m['n']} held-out "
          f"images of {data}; {what})")
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2))
    return 0


def cmd_samplers(a) -> int:
    from ..core.samplers import SAMPLERS

    import inspect

    print(f"{'name':<19} {'order':>5} {'stochastic':>10} {'NFE/step':>8}  description")
    for name, s in SAMPLERS.items():
        nfe = "adaptive" if not s.fixed_nfe else s.nfe_per_step
        print(f"{name:<19} {s.order:>5} {str(s.stochastic):>10} {nfe:>8}  {s.description}")
        knobs = [f"{n}={p.default!r}" for n, p in inspect.signature(s.fn).parameters.items()
                 if p.kind == p.KEYWORD_ONLY and n not in ("cond", "generator", "callback")]
        if knobs and getattr(a, "verbose", False):
            print(f"{'':<19} knobs: {', '.join(knobs)}")
    print("\nNFE/step: network calls per grid interval (the final step to sigma = 0 takes one); "
          "knobs: `diffusionlab samplers -v`, set with `sample --opt KEY=VALUE`.")
    return 0


def _add_demo(sub):
    p = sub.add_parser("demo", help="text-to-image on MNIST-5k: train, sample, draw and measure (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--time-budget", type=float, default=600.0, help="training seconds (default 600)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="train exactly this many steps instead of a time budget (e.g. a slower CPU's step count)")
    p.add_argument("--n-eval", type=int, default=500, help="samples per measured cell (500)")
    p.add_argument("--sampler", default=None, help="recorded sampling default (the demo's: dpmpp_2m)")
    p.add_argument("--steps", type=int, default=None, help="recorded sampler steps (the demo's: 12)")
    p.add_argument("--guidance", type=float, default=None, help="recorded CFG scale (the demo's: 3)")
    p.add_argument("--p-uncond", type=float, default=None, help="conditioning dropout (the demo's: 0.2)")
    p.add_argument("--text-encoder", choices=["minilm", "small"], default=None, help="the demo's: minilm")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="auto (bf16 where the CPU has it natively, else fp32) or forced")
    p.add_argument("--no-progress", action="store_true")


def cmd_demo(a) -> int:
    from .demo import run_demo

    over = {k: v for k, v in (("sample_sampler", a.sampler), ("sample_steps", a.steps), ("guidance", a.guidance),
                              ("p_uncond", a.p_uncond), ("text_encoder", a.text_encoder), ("max_steps", a.max_steps),
                              ("precision", a.precision))
            if v is not None}
    budget = None if a.max_steps is not None else a.time_budget
    res = run_demo(a.out, budget, a.n_eval, progress=not a.no_progress, **over)
    print((Path(a.out) / "report.md").read_text())
    print(json.dumps(res["metrics"], indent=2))
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "noise": cmd_noise, "eval": cmd_eval,
            "samplers": cmd_samplers, "demo": cmd_demo, "img2img": cmd_img2img, "inpaint": cmd_inpaint,
            "upscale": cmd_upscale,
            "train-classifier": cmd_train_classifier}

HINTS = {
    "FileNotFoundError": "check the path (run dirs hold checkpoints/; --data takes mnist, digits or a folder)",
    "CheckpointError": "point --ckpt at a run directory written by `diffusionlab train`",
    "TrainingDiverged": "resume from the last checkpoint with a lower --lr or --precision fp32",
    "ValueError": "see `diffusionlab <command> --help`",
    "NotADirectoryError": "pass the folder that contains the images",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusionlab", description="Train, sample and measure diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    _add_noise(sub)
    _add_eval(sub)
    sp = sub.add_parser("samplers", help="list the registered samplers")
    sp.add_argument("-v", "--verbose", action="store_true", help="also list each sampler's knobs")
    _add_demo(sub)
    _add_pipelines(sub)
    _add_train_classifier(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..models.checkpoint import CheckpointError
    from ..training.trainer import TrainingDiverged

    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError, TrainingDiverged) as e:
        kind = type(e).__name__
        print(f"diffusionlab {args.command}: error: {e}", file=sys.stderr)
        print(f"hint: {getattr(e, 'hint', None) or HINTS.get(kind, 'see --help')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
