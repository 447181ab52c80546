"""Guidance rescale (Lin et al. 2023), as the library now applies it (on v, normalised coordinates):
the demo model at a large CFG scale with phi 0 / 0.7 / 1, the same prompts and seeds per column.

    .venv/bin/python bench/rescale_picture.py --ckpt runs/demo --scale 7 --out docs/guidance_rescale.png

Also prints the mean per-image std and mean of the samples at each phi (over-exposure shows as a
larger spread of pixel values) and the requested-digit accuracy of the project's digit classifier
(n samples per row)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="runs/demo")
    p.add_argument("--scale", type=float, default=7.0)
    p.add_argument("--phis", default="0,0.7,1")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--out", default=str(HERE.parent / "docs" / "guidance_rescale.png"))
    a = p.parse_args()

    import diffusionlab as dl
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.evaluation import load_digit_classifier
    from diffusionlab.evaluation.digits import digit_metrics
    from diffusionlab.evaluation.viz import save_grid
    from diffusionlab.pipelines.conditioning import conditioned
    from diffusionlab.text import prompt_for

    den = dl.load_denoiser(a.ckpt, autocast_dtype=torch.bfloat16 if cpu_info()["fast_bf16"] else None)
    choice = dl.sampling_defaults(den)
    labels = torch.arange(a.n) % 10
    prompts = [prompt_for(int(k), "heldout", i // 10) for i, k in enumerate(labels)]
    classifier = load_digit_classifier()
    rows = []
    print(f"{a.ckpt}: {choice.sampler}, {choice.steps} steps, CFG scale {a.scale}, {a.n} samples per phi; "
          f"cpu {cpu_info().get('kind', '')}")
    for phi in (float(v) for v in a.phis.split(",")):
        guided, cond = conditioned(den, prompt=prompts, guidance=a.scale, rescale=phi)
        x = dl.sample_many(guided, den.info.image_shape, a.n, choice.sampler, choice.steps, seed=0,
                           progress=False, cond=cond(a.n))
        m = digit_metrics(x, classifier, requested=labels)
        print(f"phi {phi:g}: pixel std per image {float(x.flatten(1).std(1).mean()):.3f}, mean "
              f"{float(x.mean()):.3f}, accuracy {m['requested_accuracy']:.3f}, confident {m['confident_fraction']:.3f}")
        rows.append(x[:10])
    save_grid(torch.cat(rows), a.out, nrow=10, upscale=2)
    print(f"wrote {a.out} (rows: phi {a.phis})")


if __name__ == "__main__":
    main()
