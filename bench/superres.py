"""Super-resolution 16 -> 32 (SR3) on held-out MNIST digits against bicubic upsampling (issue 17).

    .venv/bin/python bench/superres.py --ckpt runs/sr --n 500

The model: `diffusionlab train --preset demo --cond image --task superres --lowres 16 ...`. Inputs:
the first n of the project's held-out digits, area-downsampled to 16x16 (`data.degrade`, the
training degradation). Compared with the original 32x32 digit: torch's bicubic upsampling
(clamped; `data.degrade.upsample`), one SR sample per input (seed 0, what `diffusionlab upscale
--ckpt RUN --input X` does) and the mean of 4 samples (seeds 0..3, `--samples 4`), by PSNR and SSIM
(`evaluation.metrics`, data range 2 in [-1, 1]) and by the project's digit classifier (accuracy on
the original label). Writes bench/RESULTS_superres.md and, with --picture, a comparison grid.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import common

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="runs/sr")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--mean-of", type=int, default=4)
    p.add_argument("--sampler", default=None, help="default: the checkpoint's")
    p.add_argument("--steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--picture", default=None, help="PNG: rows low-res, bicubic, one sample, mean, original")
    p.add_argument("--out", default=str(HERE / "RESULTS_superres.md"))
    a = p.parse_args()

    import diffusionlab as dl
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.data import load_mnist
    from diffusionlab.data.degrade import downsample, upsample
    from diffusionlab.evaluation import load_digit_classifier
    from diffusionlab.evaluation.digits import extract_features
    from diffusionlab.evaluation.metrics import psnr, ssim
    from diffusionlab.pipelines.upscale import lowres_size, upscale

    cpu = cpu_info()
    den = dl.load_denoiser(a.ckpt, autocast_dtype=torch.bfloat16 if cpu["fast_bf16"] else None)
    info = den.info
    sampler, steps = a.sampler or info.default_sampler, a.steps or info.default_steps
    x_all, y_all = load_mnist("heldout", 32, return_labels=True)
    x, y = x_all[: a.n], y_all[: a.n]
    low = downsample(x, lowres_size(den))
    clf = load_digit_classifier()

    def acc(imgs):
        _, probs = extract_features(clf, imgs.clamp(-1, 1))
        return float((torch.from_numpy(probs).argmax(1) == y).float().mean())

    rows = []

    def row(name, imgs, secs=None):
        rows.append((name, float(psnr(imgs, x).clamp(max=float("inf")).mean()), float(ssim(imgs, x).mean()),
                     acc(imgs), secs))
        print(rows[-1], flush=True)

    bic = upsample(low, x.shape[-2:])
    row("bicubic (torch, clamped)", bic)
    draws = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(a.mean_of):
            draws.append(upscale(den, low, steps, sampler, seed=k))
    secs = (time.perf_counter() - t0) / a.mean_of / a.n * 100
    row("SR3, one sample (seed 0)", draws[0], secs)
    per_seed = [float(psnr(d, x).mean()) for d in draws]
    mean = torch.stack(draws).mean(0).clamp(-1, 1)
    row(f"SR3, mean of {a.mean_of} samples", mean, secs * a.mean_of)
    row("original 32x32 (reference)", x)
    rows[-1] = (rows[-1][0], float("inf"), *rows[-1][2:])
    from diffusionlab.models.checkpoint import load_checkpoint

    step = load_checkpoint(a.ckpt)["config"].get("step")
    base_psnr, base_ssim = rows[0][1], rows[0][2]
    lines = common.report_header("Super-resolution 16 -> 32 on held-out digits (issue 17)",
                                 f"python bench/superres.py --ckpt {a.ckpt} --n {a.n}") + [
             f"- model: {a.ckpt} (step {step}), {sampler} {steps} steps; inputs: "
             f"the first {a.n} held-out digits area-downsampled to 16x16; PSNR / SSIM against the original "
             "in [-1, 1] (data range 2); accuracy = the project's digit classifier reads the original label",
             "", "| method | PSNR (dB) | SSIM | classifier accuracy | seconds per 100 inputs |",
             "|---|---:|---:|---:|---:|"]
    for name, ps, ss, ac, sp in rows:
        lines.append(f"| {name} | {'inf' if ps == float('inf') else f'{ps:.2f}'} | {ss:.4f} | {ac:.3f} | {'-' if sp is None else f'{sp:.1f}'} |")
    m = rows[2]
    lines += ["", f"Mean of {a.mean_of} vs bicubic: PSNR {m[1] - base_psnr:+.2f} dB, SSIM {m[2] - base_ssim:+.4f} "
              f"({'beats' if m[1] > base_psnr and m[2] > base_ssim else 'does NOT beat'} bicubic on both). "
              f"One sample vs bicubic: PSNR {rows[1][1] - base_psnr:+.2f} dB, SSIM {rows[1][2] - base_ssim:+.4f}. "
              "PSNR of each single seed: " + ", ".join(f"{v:.2f}" for v in per_seed) + "."]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if a.picture:
        from diffusionlab.evaluation.viz import save_grid

        k = 10
        near = torch.nn.functional.interpolate(low[:k], size=x.shape[-2:], mode="nearest")
        save_grid(torch.cat([near, bic[:k], draws[0][:k], mean[:k], x[:k]]), a.picture, nrow=k, upscale=2)
        print("wrote", a.picture)


if __name__ == "__main__":
    main()
