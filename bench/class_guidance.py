"""Class-conditional guidance on MNIST (issue 15): the demo recipe with class conditioning,
measured at several classifier-free guidance scales with the project's digit classifier
(requested-class accuracy, confident fraction, class entropy, FD / floor), plus guidance
rescale and a guidance interval at the best scale, a negative class on the unconditional path,
a fidelity / diversity plot and the README's guidance-scale picture.

    .venv/bin/python bench/class_guidance.py --n 500     # trains runs/class first if missing

The run is trained by exactly `diffusionlab train --preset demo --cond class --time-budget 600
--out runs/class` (called through the CLI's own entry point). Samples use the checkpoint's
recorded sampler and steps and what `diffusionlab sample --ckpt runs/class --class K --guidance
S` builds (the CLI's ``_classifier_free``), class i % 10 for sample i and the same per-sample
seeds at every scale. Writes bench/RESULTS_class_guidance.md, bench/RESULTS_class_guidance.png
and docs/guidance_class.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent


def flags(**kw):
    """The sample command's conditioning flags, as argparse would fill them."""
    base = dict(class_=None, negative_class=None, guidance=None, guidance_rescale=0.0, guidance_interval=None)
    base.update(kw)
    return SimpleNamespace(**base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/class")
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--scales", default="0,1,1.5,2,3,5")
    p.add_argument("--rescale", type=float, default=0.7, help="also measured at the best scale")
    p.add_argument("--interval", default="0.3,20", help="LO,HI in sigma, also measured at the best scale")
    p.add_argument("--negative", type=int, default=7, help="the negative class on the unconditional path")
    p.add_argument("--negative-scale", type=float, default=3.0)
    p.add_argument("--out", default=str(HERE / "RESULTS_class_guidance.md"))
    a = p.parse_args()

    import diffusionlab as dl
    from diffusionlab.apps.cli import _classifier_free, main as cli_main
    from diffusionlab.core.cfg import null_cond
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.evaluation.digits import extract_features
    from diffusionlab.evaluation.viz import save_grid

    run = Path(a.run)
    if not (run / "checkpoints").is_dir():
        rc = cli_main(["train", "--preset", "demo", "--cond", "class", "--time-budget", f"{a.budget:g}",
                       "--out", str(run), "--overwrite"])
        assert rc == 0, rc
    base = dl.load_denoiser(run, autocast_dtype=torch.bfloat16 if cpu_info()["fast_bf16"] else None)
    info = base.info
    sampler, steps = info.default_sampler or "ddim", info.default_steps or 50
    classifier = load_digit_classifier()
    labels = torch.arange(a.n) % 10
    rows, curve = [], []

    def draw(f, cond, n=a.n, seed=0):
        den = _classifier_free(f, base)
        return dl.sample_many(den, info.image_shape, n, sampler, steps, seed=seed, cond=cond, progress=False)

    def measure(name, f, cond, requested=labels):
        t0 = time.perf_counter()
        x = draw(f, cond)
        secs = time.perf_counter() - t0
        m = digit_metrics(x, classifier)
        _, probs = extract_features(classifier, x.clamp(-1, 1))
        probs = torch.from_numpy(probs)
        pred, top = probs.argmax(1), probs.max(1).values
        row = dict(name=name, confident=m["confident_fraction"], entropy=m["class_entropy"],
                   fd=m["fd"] / m["fd_floor"], seconds=secs, pred=pred, top=top)
        row["accuracy"] = float((pred == requested).float().mean()) if requested is not None else None
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("pred", "top")}, flush=True)
        return row

    cond = dl.Cond(labels=labels)
    for s in (float(v) for v in a.scales.split(",")):
        r = measure(f"scale {s:g}", flags(guidance=s), cond)
        curve.append((s, r))
    best_s, best = max(curve, key=lambda sr: (round(sr[1]["accuracy"], 3), -sr[1]["fd"]))
    measure(f"scale {best_s:g}, rescale {a.rescale:g}", flags(guidance=best_s, guidance_rescale=a.rescale), cond)
    lo, hi = (float(v) for v in a.interval.split(","))
    measure(f"scale {best_s:g}, interval ({lo:g}, {hi:g}]", flags(guidance=best_s, guidance_interval=(lo, hi)), cond)

    # negative class on the unconditional path: no --class, --negative-class K --guidance S
    null = null_cond(base, a.n)
    un = measure("unconditional (null label), unguided", flags(), null, requested=None)
    neg = measure(f"unconditional, --negative-class {a.negative} --guidance {a.negative_scale:g}",
                  flags(negative_class=str(a.negative), guidance=a.negative_scale), null, requested=None)
    share = {k: float((r["pred"] == a.negative).float().mean()) for k, r in (("un", un), ("neg", neg))}
    rest_conf = {k: float((r["top"][r["pred"] != a.negative] > 0.9).float().mean()) for k, r in (("un", un), ("neg", neg))}

    # the README's picture: one seed per column, a row per scale, digits 0..9
    pic_scales = [0.0, 1.0, 3.0, 5.0]
    pic = [draw(flags(guidance=s), dl.Cond(labels=torch.arange(10)), n=10, seed=3) for s in pic_scales]
    save_grid(torch.cat(pic).clamp(-1, 1), HERE.parent / "docs" / "guidance_class.png", nrow=10, upscale=3)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    xs = [s for s, _ in curve]
    ax[0].plot(xs, [r["accuracy"] for _, r in curve], "o-", label="requested-class accuracy")
    ax[0].plot(xs, [r["confident"] for _, r in curve], "s--", label="confident (p > 0.9)")
    ax[0].set_xlabel("guidance scale s (1 = conditional, 0 = unconditional)"); ax[0].set_ylim(0, 1.02)
    ax[0].legend(); ax[0].set_title("fidelity")
    ax[1].plot([r["fd"] for _, r in curve], [r["accuracy"] for _, r in curve], "o-")
    for s, r in curve:
        ax[1].annotate(f"s={s:g}", (r["fd"], r["accuracy"]), textcoords="offset points", xytext=(4, -10))
    ax[1].set_xlabel("FD / floor (lower = closer to the real distribution)"); ax[1].set_ylabel("accuracy")
    ax[1].set_title("fidelity vs diversity")
    fig.tight_layout(); fig.savefig(HERE / "RESULTS_class_guidance.png", dpi=110); plt.close(fig)

    cpu = cpu_info()
    run_json = json.loads((run / "run.json").read_text())
    lines = ["# Class-conditional guidance on MNIST (issue 15)", "",
             f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `python bench/class_guidance.py --n {a.n}`; run {run} trained by "
             f"`diffusionlab train --preset demo --cond class --time-budget {a.budget:g} --out {run}` "
             f"({run_json['summary']['steps']} steps)",
             f"- CPU: {cpu['model']}, {cpu['kind']}; {os.cpu_count()} cores",
             f"- sampling: {sampler}, {steps} steps (the checkpoint's), {a.n} samples, class i % 10, seeds 0..{a.n - 1}; "
             "best scale = highest accuracy, ties to the lower FD",
             "", "| guidance | requested-class accuracy | confident (p > 0.9) | class entropy | FD / floor | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {r['name']} | {acc} | {r['confident']:.3f} | {r['entropy']:.3f} | {r['fd']:.2f}x | {r['seconds']:.0f} |")
    ok = share["neg"] <= 0.03 and share["neg"] <= share["un"] / 3 and abs(rest_conf["neg"] - rest_conf["un"]) <= 0.05
    lines += ["", f"Negative class {a.negative} on the unconditional path at scale {a.negative_scale:g}: share of "
              f"{a.negative}s {share['un']:.3f} unguided -> {share['neg']:.3f} "
              f"(bar <= 0.03 and <= {share['un'] / 3:.3f}); confident fraction of the other samples "
              f"{rest_conf['un']:.3f} -> {rest_conf['neg']:.3f} (bar: within 0.05). {'Met.' if ok else 'NOT met.'}",
              "", "![fidelity / diversity](RESULTS_class_guidance.png)", ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
