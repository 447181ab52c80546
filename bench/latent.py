"""Latent diffusion measured (issue 25), project venv, one stage at a time:

- ``ae``: KL autoencoders on MNIST-5k at 32 px for several (f, C) cells, ``--budget`` training
  seconds each (2 minutes); held-out PSNR / SSIM, and on the reconstructions of the 1,000
  held-out digits the digit classifier's accuracy (against their labels) and the feature FD to
  the held-out digits (the latent model's quality floor). Cached: runs/ae_f{f}c{C}.
- ``text``: the small Stable Diffusion (``--preset demo-text-latent --latent AE``) trained for
  the demo's 10-minute budget through ``apps.demo.run_demo`` (the same evaluation as `make demo`:
  500 prompted samples on held-out phrasings, 500 empty-prompt samples), into runs/latent-text;
  compared with the pixel demo in runs/demo (eval.json, run.json, metrics.jsonl).

    .venv/bin/python bench/latent.py ae [--cells 2x4,4x4,4x8,8x16] [--budget 120]
    .venv/bin/python bench/latent.py text --ae runs/ae_f2c4 [--budget 600]
    .venv/bin/python bench/latent.py report

Writes bench/RESULTS_latent.md (+ .json) from what the stages left under runs/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusionlab.core.devices import cpu_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS_latent.json"


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(res: dict) -> None:
    RESULTS.write_text(json.dumps(res, indent=2, default=str))


def stage_ae(cells: list[tuple[int, int]], budget: float) -> None:
    from diffusionlab.data import load_mnist
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.models.latent import load_autoencoder
    from diffusionlab.training.autoencoder import autoencoder_config, reconstruction_metrics, train_autoencoder

    res = _load()
    rows = res.setdefault("ae", {})
    images, labels = load_mnist("heldout", 32, return_labels=True)
    classifier = load_digit_classifier()
    for f, c in cells:
        key, out = f"f{f}c{c}", ROOT / "runs" / f"ae_f{f}c{c}"
        if key in rows and rows[key].get("budget") == budget:
            continue
        summary = train_autoencoder(autoencoder_config(out=str(out), f=f, latent_channels=c, time_budget=budget),
                                    overwrite=True)
        codec = load_autoencoder(out)
        t0 = time.perf_counter()
        rec = torch.cat([codec.reconstruct(images[i:i + 250]) for i in range(0, len(images), 250)])
        seconds = time.perf_counter() - t0
        m = digit_metrics(rec, classifier, requested=labels)
        rows[key] = {"f": f, "latent_channels": c, "latent_shape": summary["latent_shape"], "budget": budget,
                     "steps": summary["steps"], "train_seconds": summary["seconds"],
                     **reconstruction_metrics(codec, images), "accuracy": m["requested_accuracy"], "fd": m["fd"],
                     "fd_floor": m["fd_floor"], "fd_ratio": m["fd_ratio"], "encode_decode_s_per_1000": seconds,
                     "numbers": c * (32 // f) ** 2, "cpu": cpu_info()}
        _save(res)
        print(key, json.dumps(rows[key]))


def stage_text(ae: str, budget: float) -> None:
    from diffusionlab.apps.demo import run_demo

    res = _load()
    out = ROOT / "runs" / "latent-text"
    r = run_demo(str(out), budget, 500, progress=False, latent=str(ae))
    res["text"] = {"ae": ae, "budget": budget, "train": r["train"], "metrics": r["metrics"],
                   "metrics_empty": r["metrics_empty"], "sampling": r["sampling"], "cpu": cpu_info()}
    _save(res)


def _img_per_s(run: Path) -> float | None:
    vals = [json.loads(line).get("img_per_s") for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v]
    return statistics.median(vals) if vals else None


def report() -> str:
    res = _load()
    cpu = cpu_info()
    lines = ["# Latent diffusion: autoencoders and the small Stable Diffusion", "",
             f"date: {time.strftime('%Y-%m-%dT%H:%M')} · CPU: {cpu['model']} ({cpu['kind']}), 2 cores · "
             "commands: `.venv/bin/python bench/latent.py ae|text|report`", ""]
    if res.get("ae"):
        lines += ["## Autoencoders (MNIST-5k, 32 px, held-out 1,000 digits)", "",
                  "| f | C | latent | numbers (pixels 1,024) | steps in budget | PSNR | SSIM | digit accuracy of "
                  "reconstructions | feature FD (floor) |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for k, r in sorted(res["ae"].items(), key=lambda kv: (kv[1]["f"], kv[1]["latent_channels"])):
            lines.append(f"| {r['f']} | {r['latent_channels']} | {'x'.join(map(str, r['latent_shape']))} | "
                         f"{r['numbers']} | {r['steps']} ({r['budget']:.0f} s) | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                         f"{r['accuracy']:.3f} | {r['fd']:.2f} ({r['fd_floor']:.2f}) |")
        lines.append("")
    if res.get("text"):
        t = res["text"]
        demo = json.loads((ROOT / "runs" / "demo" / "eval.json").read_text())
        pixel_ips = _img_per_s(ROOT / "runs" / "demo")
        latent_ips = _img_per_s(ROOT / "runs" / "latent-text")
        ae_key = Path(t["ae"]).name.replace("ae_", "")
        ae = res.get("ae", {}).get(ae_key, {})
        p, e = t["metrics"], t["metrics_empty"]
        dp, de = demo["metrics_prompted"], demo["metrics_empty"]
        lines += ["## The small Stable Diffusion vs the pixel demo (10-minute budget each)", "",
                  f"Latent: `--preset demo-text-latent --latent {t['ae']}`; pixel: `make demo` (runs/demo). 500 "
                  "samples each, held-out phrasings; the recorded defaults (SDE-DPM-Solver++(2M), 16 steps, CFG 3).",
                  "", "| | pixel demo | latent |", "|---|---:|---:|",
                  f"| training img/s (median) | {pixel_ips:.0f} | {latent_ips:.0f} |",
                  f"| steps in 600 s | {demo['train']['steps']} | {t['train']['steps']} |",
                  f"| sampling s per image (500 prompted) | {demo['sampling']['seconds_prompted'] / 500:.3f} | "
                  f"{t['sampling']['seconds_prompted'] / 500:.3f} |",
                  f"| prompted accuracy / confident | {dp['requested_accuracy']:.3f} / {dp['confident_fraction']:.3f} | "
                  f"{p['requested_accuracy']:.3f} / {p['confident_fraction']:.3f} |",
                  f"| prompted FD / floor | {dp['fd_ratio']:.2f}x | {p['fd_ratio']:.2f}x |",
                  f"| empty prompt confident, FD / floor | {de['confident_fraction']:.3f}, {de['fd_ratio']:.2f}x | "
                  f"{e['confident_fraction']:.3f}, {e['fd_ratio']:.2f}x |",
                  f"| the autoencoder's reconstructions: FD / floor (the latent model's floor) | - | "
                  f"{ae.get('fd_ratio', float('nan')):.2f}x |", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=("ae", "text", "report"))
    ap.add_argument("--cells", default="2x4,4x4,4x8,8x16")
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--ae", default="runs/ae_f2c4")
    a = ap.parse_args(argv)
    if a.stage == "ae":
        stage_ae([tuple(int(v) for v in c.split("x")) for c in a.cells.split(",")], a.budget or 120.0)
    elif a.stage == "text":
        stage_text(a.ae, a.budget or 600.0)
    text = report()
    (ROOT / "bench" / "RESULTS_latent.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
