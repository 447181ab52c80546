"""Likelihood benchmark (issue 4): a fixed-variance L_simple model and a learned-variance hybrid
model (improved DDPM) trained on MNIST-5k at 28x28 for the same number of optimizer steps
(the first run's 10-minute CPU budget decides it), then on the 1,000 held-out digits:

- bits/dim by the VLB (all T = 1000 terms per image, n images) and by the probability-flow ODE
  (Hutchinson, dequantized; n images), each with its standard error over images;
- digit-feature FD of 1,000 samples from DDPM ancestral sampling with 50 and 100 respaced steps.

    .venv/bin/python bench/likelihood.py                 # all stages; cached, resumable
    .venv/bin/python bench/likelihood.py --budget 120    # a quick smoke run (other run dir)

Each stage's result is cached in <runs>/results.json; a rerun computes only what is missing.
Writes bench/RESULTS_likelihood.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffusionlab.data.embedded import load_mnist
from diffusionlab.core.sampling import sample_many
from diffusionlab.evaluation import digit_metrics, load_digit_classifier
from diffusionlab.core.likelihood import ode_bits_per_dim, quantize_8bit, vlb
from diffusionlab.models.loading import load_denoiser
from diffusionlab.training import Trainer
from diffusionlab.training.config import DiffusionConfig, TrainConfig, default_model

MODELS = {
    "fixed": dict(learned_variance=False, loss_kind="simple"),
    "learned": dict(learned_variance=True, loss_kind="hybrid"),
}


def config(name: str, out: Path, budget: float | None, steps: int | None) -> TrainConfig:
    spec = MODELS[name]
    return TrainConfig(
        data="mnist", image_size=28, lr=3e-3, batch_size=64, time_budget=budget if steps is None else None,
        max_steps=steps, out_dir=str(out / name), log_every=10, val_every=200, sample_every=0,
        checkpoint_every=0,
        model=default_model(dim=64, dim_mults=(1, 2), patch_size=2, learned_variance=spec["learned_variance"]),
        diffusion=DiffusionConfig(objective="v", beta_schedule="cosine", timesteps=1000, loss_kind=spec["loss_kind"]))


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path: Path, res: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/bench_likelihood")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds of the first (fixed) model")
    ap.add_argument("--n-vlb", type=int, default=200)
    ap.add_argument("--n-ode", type=int, default=100)
    ap.add_argument("--n-fd", type=int, default=1000)
    ap.add_argument("--out", default="bench/RESULTS_likelihood.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    rpath = runs / "results.json"
    res = load_results(rpath)
    cmd = "python bench/likelihood.py " + " ".join(sys.argv[1:])

    # ---- training: the fixed model by time budget, the learned one for the same steps
    for name in MODELS:
        if f"train_{name}" in res:
            continue
        steps = res["train_fixed"]["steps"] if name != "fixed" else None
        cfg = config(name, runs, a.budget, steps)
        cfg = dataclasses.replace(cfg, progress=False)
        print(f"training {name} ({'budget %.0f s' % a.budget if steps is None else f'{steps} steps'})", flush=True)
        s = Trainer(config=cfg, overwrite=True).train()  # a result not cached yet: replace any partial run
        res[f"train_{name}"] = {"steps": s["steps"], "train_seconds": s["train_seconds"]}
        save_results(rpath, res)

    heldout = quantize_8bit(load_mnist("heldout", 28))
    for name in MODELS:
        den = load_denoiser(runs / name)
        key = f"vlb_{name}"
        if key not in res:
            t0 = time.perf_counter()
            r = vlb(den, heldout[: a.n_vlb], batch_size=200, progress=True)
            res[key] = {**r.summary(), "seconds": time.perf_counter() - t0}
            save_results(rpath, res)
            print(key, res[key], flush=True)
        key = f"ode_{name}"
        if key not in res:
            t0 = time.perf_counter()
            r = ode_bits_per_dim(den, heldout[: a.n_ode], batch_size=50, rtol=1e-4, atol=1e-4, progress=True)
            res[key] = {**r.summary(), "seconds": time.perf_counter() - t0, "rtol": 1e-4, "atol": 1e-4}
            save_results(rpath, res)
            print(key, res[key], flush=True)
    clf = load_digit_classifier()
    for name in MODELS:
        den = load_denoiser(runs / name)
        for steps in (50, 100):
            key = f"fd_{name}_{steps}"
            if key in res:
                continue
            t0 = time.perf_counter()
            x = sample_many(den, (1, 28, 28), a.n_fd, "ddpm", steps, seed=0, batch_size=250, progress=False)
            m = digit_metrics(x, clf)
            res[key] = {k: m[k] for k in ("fd", "fd_floor", "fd_ratio", "confident_fraction", "class_entropy")}
            res[key]["seconds"] = time.perf_counter() - t0
            save_results(rpath, res)
            print(key, res[key], flush=True)
    res["command"] = cmd
    res["date"] = datetime.date.today().isoformat()
    res["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    save_results(rpath, res)
    Path(a.out).write_text(report(res, a))
    print(Path(a.out).read_text())
    return 0


def report(res: dict, a) -> str:
    f, lv = res["train_fixed"], res["train_learned"]
    L = ["# Likelihood on MNIST-5k (issue 4)", "",
         f"Made {res['date']} at commit {res['commit']} with `{res['command']}` on 2 CPU cores.", "",
         f"Both models: U-Net dim 64, dim_mults (1, 2), 2x2 patches, v-prediction, cosine schedule, T = 1000, "
         f"batch 64, lr 3e-3, bf16 autocast where the CPU has it; {f['steps']} optimizer steps each "
         f"(fixed: {f['train_seconds']:.0f} s, learned: {lv['train_seconds']:.0f} s of training). "
         "The learned-variance model adds improved DDPM's variance channel and trains on "
         "L_simple + 0.001 L_vlb. Evaluation in fp32 with the EMA weights on the 1,000-image held-out "
         "split (the first n images), 28x28 8-bit digits; bits/dim use the one mapping documented in "
         "`diffusionlab/likelihood.py` (bucket width 2/255). +- is the standard error over images.", "",
         "| model | VLB bits/dim | (decoder / KL sum / prior) | ODE bits/dim | ODE NFE | FD, 50 steps | FD, 100 steps |",
         "|---|---|---|---|---|---|---|"]
    for name, label in (("fixed", "fixed variance (beta_tilde), L_simple"), ("learned", "learned variance, hybrid")):
        v, o = res[f"vlb_{name}"], res[f"ode_{name}"]
        fd50, fd100 = res[f"fd_{name}_50"], res[f"fd_{name}_100"]
        L.append(f"| {label} | {v['bits_per_dim']:.3f} +- {v['stderr']:.3f} (n={v['n']}) | "
                 f"{v['decoder_bpd']:.3f} / {v['kl_bpd']:.3f} / {v['prior_bpd']:.1e} | "
                 f"{o['bits_per_dim']:.3f} +- {o['stderr']:.3f} (n={o['n']}) | {o['nfe']} | "
                 f"{fd50['fd']:.2f} (x{fd50['fd_ratio']:.1f} floor) | {fd100['fd']:.2f} (x{fd100['fd_ratio']:.1f} floor) |")
    L += ["", "FD: digit-classifier feature Frechet distance of 1,000 DDPM-ancestral samples (50 or 100 "
          "respaced steps; the learned model samples with its learned variance recomputed for the strided "
          "chain, the fixed model with beta_tilde) to the held-out digits; 'floor' is real-vs-real at the "
          "same n. Not comparable with Inception FIDs.",
          "", "ODE: probability-flow ODE from sigma_min to sigma_max of the model's table, RK45 with "
          "rtol = atol = 1e-4, one Rademacher probe per image, one uniform dequantization per image; "
          "NFE is the total number of ODE right-hand sides over all batches (each is one forward and one "
          "backward pass of a batch of 50).", ""]
    return "\n".join(L)


if __name__ == "__main__":
    raise SystemExit(main())
