"""Class-conditional guidance on MNIST (issue 15, first pass): the demo recipe with class
conditioning, measured at several classifier-free guidance scales with the project's digit
classifier (requested-class accuracy, confident fraction, class entropy, FD / floor).

    .venv/bin/python bench/class_guidance.py --budget 600 --n 500        # trains runs/class first if missing

The run is trained as `diffusionlab train --preset demo --cond class --time-budget B --out RUN`
would; samples use the checkpoint's recorded sampler and steps, class i % 10 for sample i, and
the same per-sample seeds at every scale. Writes bench/RESULTS_class_guidance.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/class")
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--scales", default="0,1,3,5")
    p.add_argument("--rescale", type=float, default=0.7, help="also measured at the best scale")
    p.add_argument("--out", default=str(HERE / "RESULTS_class_guidance.md"))
    a = p.parse_args()

    import diffusionlab as dl
    from diffusionlab.core.cfg import classifier_free
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.evaluation.digits import extract_features
    from diffusionlab.training import Trainer, demo_config

    run = Path(a.run)
    if not (run / "checkpoints").is_dir():
        cfg = demo_config(cond="class", time_budget=a.budget, out_dir=str(run), progress=False)
        Trainer(config=cfg, overwrite=True).train()
    den = dl.load_denoiser(run, autocast_dtype=torch.bfloat16 if cpu_info()["fast_bf16"] else None)
    info = den.info
    sampler, steps = info.default_sampler or "ddim", info.default_steps or 50
    classifier = load_digit_classifier()
    labels = torch.arange(a.n) % 10
    cond = dl.Cond(labels=labels)
    rows = []

    def measure(name, wrapped):
        t0 = time.perf_counter()
        x = dl.sample_many(wrapped, info.image_shape, a.n, sampler, steps, seed=0, cond=cond, progress=False)
        secs = time.perf_counter() - t0
        m = digit_metrics(x, classifier)
        _, probs = extract_features(classifier, x.clamp(-1, 1))
        acc = float((torch.from_numpy(probs).argmax(1) == labels).float().mean())
        rows.append((name, acc, m["confident_fraction"], m["class_entropy"], m["fd"] / m["fd_floor"], secs))
        print(rows[-1], flush=True)
        return acc

    best, best_acc = None, -1.0
    for s in (float(v) for v in a.scales.split(",")):
        acc = measure(f"scale {s:g}", classifier_free(den, s) if s != 1 else den)
        if acc > best_acc:
            best, best_acc = s, acc
    measure(f"scale {best:g}, rescale {a.rescale:g}", classifier_free(den, best, rescale=a.rescale))
    measure(f"scale {best:g}, interval (0.3, 20]", classifier_free(den, best, interval=(0.3, 20.0)))
    cpu = cpu_info()
    lines = ["# Class-conditional guidance on MNIST (issue 15, first pass)", "",
             f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `python bench/class_guidance.py --budget {a.budget:g} --n {a.n}` (run {run})",
             f"- CPU: {cpu['model']}, {cpu['kind']}; {os.cpu_count()} cores",
             f"- sampling: {sampler}, {steps} steps (the checkpoint's), {a.n} samples, class i % 10, seeds 0..{a.n - 1}",
             "", "| guidance | requested-class accuracy | confident (p > 0.9) | class entropy | FD / floor | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {acc:.3f} | {conf:.3f} | {ent:.3f} | {fd:.2f}x | {s:.0f} |" for n, acc, conf, ent, fd, s in rows]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
