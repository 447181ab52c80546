"""Inpainting (RePaint) and img2img (SDEdit) on held-out MNIST digits (issue 17).

    .venv/bin/python bench/pipelines.py --ckpt runs/demo --n 500

The model is the demo's text model sampled without a prompt (its null path, i.e. unconditional),
with the checkpoint's sampler and steps, exactly what `diffusionlab inpaint --ckpt RUN --input X
--mask left|right` and `diffusionlab img2img --ckpt RUN --input X --strength S` do. Inputs: the
first n of the project's 1,000 held-out digits (`load_mnist("heldout")`), seeds 0..n-1. Measured
with the project's digit classifier: agreement with the original label; for inpainting also the
masked half left blank (black) as the baseline, RePaint's resampling on / off, with and without
reconstruction guidance (`--reconstruction`), and the largest
difference in the known half; for img2img the RMSE to the input. Writes bench/RESULTS_pipelines.md.
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
    p.add_argument("--ckpt", default="runs/demo")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--repaint", default="1:1:0,5:3:0,1:1:20,5:3:20,10:10:0",
                   help="J:R:W settings (R = 1: no resampling; W: reconstruction guidance weight, 0 = none)")
    p.add_argument("--pictures", default=None, help="folder for the README's before / after grids")
    p.add_argument("--pictures-only", action="store_true", help="write the grids, not the results file")
    p.add_argument("--repaint-n", type=int, default=100, help="inputs for the costly J:R settings (R > 3)")
    p.add_argument("--classifier", default="runs/classifier", help="trained first if missing (train-classifier)")
    p.add_argument("--classifier-budget", type=float, default=180.0, help="seconds of classifier training")
    p.add_argument("--classifier-scales", default="0,1,3,10")
    p.add_argument("--parts", default="inpaint,img2img,classifier")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--out", default=str(HERE / "RESULTS_pipelines.md"))
    a = p.parse_args()

    import diffusionlab as dl
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.data import load_mnist
    from diffusionlab.evaluation import load_digit_classifier
    from diffusionlab.evaluation.digits import extract_features
    from diffusionlab.pipelines.conditioning import CLASSIFIER_SIGMA_MAX, conditioned
    from diffusionlab.pipelines.img2img import img2img
    from diffusionlab.pipelines.inpaint import DEFAULT_JUMP, DEFAULT_RECONSTRUCTION, DEFAULT_RESAMPLE, inpaint, parse_mask
    from diffusionlab.evaluation.viz import save_grid

    den = dl.load_denoiser(a.ckpt, autocast_dtype=torch.bfloat16 if cpu_info()["fast_bf16"] else None)
    info = den.info
    choice = dl.sampling_defaults(info, None, a.steps)  # the checkpoint's sampler and steps, as the CLI
    sampler, steps = choice.sampler, choice.steps
    guided, cond = conditioned(den)            # no prompt: the null condition
    x_all, y_all = load_mnist("heldout", 32, return_labels=True)
    x, y = x_all[: a.n], y_all[: a.n]
    clf = load_digit_classifier()

    def agree(imgs, labels):
        _, probs = extract_features(clf, imgs.clamp(-1, 1))
        return float((torch.from_numpy(probs).argmax(1) == labels).float().mean())

    rows_i, rows_s, rows_c = [], [], []
    K = 10  # digits per picture row
    pics = {}
    parts = a.parts.split(",")
    for side in (("left", "right") if "inpaint" in parts else ()):
        m = parse_mask(side, info.image_shape)
        blank = torch.where(m, torch.full_like(x, -1.0), x)
        rows_i.append((side, "masked half left black (baseline)", a.n, agree(blank, y), None, 0.0))
        print(rows_i[-1], flush=True)
        pics[side] = [x[:K], torch.where(m, torch.zeros_like(x[:K]), x[:K])]
        for spec in a.repaint.split(","):
            J, R, W = (float(v) for v in spec.split(":"))
            J, R = int(J), int(R)
            n = a.n if R <= 3 else min(a.n, a.repaint_n)
            t0 = time.perf_counter()
            out = inpaint(guided, x[:n], m, steps, sampler, cond(n), seed=0, jump_length=J, resample=R,
                          reconstruction=W)
            secs = time.perf_counter() - t0
            diff = float((out - x[:n]).abs()[~m.expand_as(out)].max())
            default = (J, R, W) == (DEFAULT_JUMP, DEFAULT_RESAMPLE, DEFAULT_RECONSTRUCTION)
            rows_i.append((side, f"RePaint J={J} R={R}" + (" (no resampling)" if R == 1 else "")
                           + (f" + reconstruction guidance {W:g}" if W else "") + (" (**default**)" if default else ""),
                           n, agree(out, y[:n]), diff, secs / n * 100))
            if W == 0 and (J, R) == (DEFAULT_JUMP, DEFAULT_RESAMPLE) or default:
                pics[side].append(out[:K])
            print(rows_i[-1], flush=True)
    for s in (float(v) for v in a.strengths.split(",")) if "img2img" in parts else ():
        t0 = time.perf_counter()
        out = img2img(guided, x, s, steps, sampler, cond(a.n), seed=0)
        pics.setdefault("img2img", [x[:K]]).append(out[:K])
        secs = time.perf_counter() - t0
        rmse = float(((out - x) ** 2).mean(dim=(1, 2, 3)).sqrt().mean())
        rows_s.append((s, agree(out, y), rmse, secs / a.n * 100))
        print(rows_s[-1], flush=True)
    # classifier guidance on the null path: what `sample --classifier CLS --class K --classifier-scale S` does
    from diffusionlab.errors import UserError
    from diffusionlab.training.classifier import classifier_summary, load_classifier, train_classifier

    cls = None
    if "classifier" in parts:
        try:
            cls = load_classifier(a.classifier)
        except UserError:  # none there yet (a run folder, or the older classifier.json format)
            train_classifier("mnist", a.classifier, None, a.classifier_budget, sigma_min=info.sigma_min,
                             sigma_max=info.finite_sigma_max())
            cls = load_classifier(a.classifier)
    labels = torch.arange(a.n) % 10
    for s in (float(v) for v in a.classifier_scales.split(",")) if cls is not None else ():
        outs = []
        t0 = time.perf_counter()
        for k in range(10):  # one class per call, as the CLI does
            g, c = conditioned(den, class_=k, classifier=cls, classifier_scale=s)
            idx = (labels == k).nonzero().flatten()
            x_k = dl.sample_many(g, info.image_shape, len(idx), sampler, steps, seed=k, cond=c(len(idx)),
                                 progress=False)
            outs.append((idx, x_k))
        xs = torch.empty(a.n, *info.image_shape)
        for idx, x_k in outs:
            xs[idx] = x_k
        rows_c.append((s, agree(xs, labels), time.perf_counter() - t0))
        pics.setdefault("classifier", []).append(xs[:K])  # sample k is class k
        print(rows_c[-1], flush=True)
    lines = common.report_header("Inpainting and img2img on held-out digits (issue 17)",
                                 f"python bench/pipelines.py --ckpt {a.ckpt} --n {a.n}") + [
             f"- model: {a.ckpt} without a prompt (the null path), {sampler} {steps} steps (the checkpoint's); "
             "the project's held-out digits, seeds 0..n-1; agreement = the digit classifier reads the original label",
             f"- clean held-out digits: agreement {agree(x, y):.3f}", "",
             "| masked half | method | inputs | agreement with the label | max abs diff, known half | seconds per 100 inputs |",
             "|---|---|---:|---:|---:|---:|"]
    for side, name, n, acc, diff, sp in rows_i:
        lines.append(f"| {side} | {name} | {n} | {acc:.3f} | {'-' if diff is None else f'{diff:.1e}'} | "
                     f"{'-' if diff is None else f'{sp:.1f}'} |")
    lines += ["", "| img2img strength | agreement with the input's label | RMSE to the input ([-1, 1] scale) | "
              "seconds per 100 inputs |", "|---:|---:|---:|---:|"]
    lines += [f"| {s:g} | {acc:.3f} | {rmse:.3f} | {sp:.1f} |" for s, acc, rmse, sp in rows_s]
    meta = classifier_summary(a.classifier) if cls is not None else None
    lines += [] if meta is None else ["", f"Classifier guidance on the null path: noise-aware classifier `{a.classifier}` "
              f"({meta['steps']} steps, {meta['seconds']:.0f} s; held-out accuracy at sigma "
              + ", ".join(f"{k}: {v:.2f}" for k, v in meta["heldout_accuracy_at_sigma"].items())
              + f"), guided at sigma <= {CLASSIFIER_SIGMA_MAX:g} (the default), class i % 10 for sample i ({a.n} samples, "
              "seed k for class k)", "",
              "| classifier scale | requested-class accuracy | seconds |", "|---:|---:|---:|"]
    lines += [] if meta is None else [f"| {s:g} | {acc:.3f} | {secs:.0f} |" for s, acc, secs in rows_c]
    if not a.pictures_only:
        Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if a.pictures:  # rows: original, masked input (grey = to fill), RePaint, RePaint + reconstruction; img2img
        for name, rows in pics.items():
            path = Path(a.pictures) / f"pipeline_{'inpaint_' + name if name in ('left', 'right') else name}.png"
            save_grid(torch.cat(rows), path, nrow=K, upscale=2)
            print("wrote", path)


if __name__ == "__main__":
    main()
