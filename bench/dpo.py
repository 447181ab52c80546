"""Diffusion-DPO measured (issue 27), project venv, one stage at a time, nothing else running.

On the demo's text model (runs/demo), with pairs from `diffusionlab make-pairs --reward
digit-confidence` over prompts for all ten digits:

- ``pairs``: the pairs (``--n``, default 1,000) in runs/dpo_bench/pairs, by the command a user
  runs, at guidance ``GUIDANCE`` (module constant: the measured setting below);
- ``runs``: DPO at each beta of ``--betas`` (``--full-lrs``: also full DPO at the first beta and
  these learning rates) and plain supervised fine-tuning on the chosen images only (their prompts as captions: ``finetune --data`` a folder with captions.jsonl), all LoRA
  rank 4 attn+conv, the same steps and 16 pairs / 16 chosen images a step; each run is paused
  every ``--every`` steps (``Trainer.train(stop_after=...)``, which checkpoints and rewrites the
  adapter) and the adapter is measured as a user loads it (``load_denoiser(base, lora=run)``):
  on ``N`` samples (20 per digit, held-out seeds, the training phrasings cycled) the reward
  (digit-confidence: the digit classifier's probability of the requested digit) and its accuracy,
  the same with an independently trained classifier (``independent``: an MLP, not a CNN, trained
  on the 1,000-digit held-out split, which the reward's classifier never saw), and the feature FD
  of the samples to the held-out digits (with its floor at the same n); the run's implicit reward
  accuracy and margin on the held-out pairs come from its metrics.jsonl;
- ``picture``: docs/dpo_before_after.png, the base and a DPO adapter at the same seeds;
- ``report``: bench/RESULTS_dpo.md from bench/RESULTS_dpo.json.

    .venv/bin/python bench/dpo.py pairs --n 1000
    .venv/bin/python bench/dpo.py runs --betas 500,2000,5000 --steps 300 --every 100
    .venv/bin/python bench/dpo.py runs --betas 100,200 --no-sft        # more betas into the same table
    .venv/bin/python bench/dpo.py runs --betas 500 --no-sft --full-lrs 1e-5,1e-4
    .venv/bin/python bench/dpo.py picture --run dpo-beta2000
    .venv/bin/python bench/dpo.py report
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffusionlab.core.devices import cpu_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS_dpo.json"
BASE = ROOT / "runs" / "demo"
WORK = ROOT / "runs" / "dpo_bench"
PAIRS = WORK / "pairs"
GUIDANCE = 1.0   # pairs and curves: the model's own conditional distribution (no CFG), where the base errs most
N = 200
PAIR_SEED, EVAL_SEED = 1000, 7


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(res: dict) -> None:
    res["cpu"] = cpu_info()
    RESULTS.write_text(json.dumps(res, indent=2, default=str))


def pair_prompts() -> list[str]:
    """Three training phrasings of each digit (30 requests, cycled by make-pairs batch by batch)."""
    from diffusionlab.text.captions import prompt_for

    return [prompt_for(k, "train", j) for j in (2, 4, 7) for k in range(10)]


def stage_pairs(n: int) -> None:
    cmd = [sys.executable, "-m", "diffusionlab", "make-pairs", "--ckpt", str(BASE), "--reward", "digit-confidence",
           "--n", str(n), "--guidance", str(GUIDANCE), "--seed", str(PAIR_SEED), "--out", str(PAIRS), "--overwrite"]
    for p in pair_prompts():
        cmd += ["--prompt", p]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    seconds = time.perf_counter() - t0
    lines = [json.loads(l) for l in (PAIRS / "pairs.jsonl").read_text().splitlines()]
    ch = np.array([l["meta"]["chosen_score"] for l in lines])
    rj = np.array([l["meta"]["rejected_score"] for l in lines])
    last = max(max(l["meta"]["chosen_index"], l["meta"]["rejected_index"]) for l in lines) + 1
    res = _load()
    res["pairs"] = {"n": len(lines), "exit_code": rc, "seconds": seconds, "candidates_used": last,
                    "yield": len(lines) / last, "chosen_mean": ch.mean(), "rejected_mean": rj.mean(),
                    "guidance": GUIDANCE, "prompts": len(pair_prompts()), "command": " ".join(cmd[1:])}
    _save(res)
    print(json.dumps(res["pairs"], indent=2))


# ------------------------------------------------------------------ measuring a model
def independent_classifier():
    """An MLP (not the reward's CNN) trained on the 1,000 held-out MNIST digits (the reward's
    classifier trained on the 4,000 training digits): a judge the reward never saw. Its accuracy
    on the training split is reported."""
    from sklearn.neural_network import MLPClassifier

    from diffusionlab.data.datasets import load_image_sets

    train, held = load_image_sets("mnist", 32, 1)
    feats = lambda x: torch.nn.functional.avg_pool2d(x, 2).flatten(1).numpy()  # noqa: E731  16x16 pixels
    clf = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, random_state=0)
    clf.fit(feats(held.images), held.labels.numpy())
    acc = float((clf.predict(feats(train.images)) == train.labels.numpy()).mean())
    return (lambda x: torch.from_numpy(clf.predict_proba(feats(x.clamp(-1, 1).float()))).float()), acc


def eval_requests():
    from diffusionlab.text.captions import prompt_for

    labels = torch.arange(N) % 10
    return labels, [prompt_for(int(k), "train", i // 10) for i, k in enumerate(labels)]


def measure(lora, guidance: float, judges, full: bool = False) -> dict:
    """Reward (mean probability of the requested digit) and accuracy by both classifiers, and FD
    to the held-out digits, of N samples of the base (+ ``lora``; with ``full``: the run ``lora``
    itself, an ordinary checkpoint)."""
    from diffusionlab.core.rng import per_sample_generators
    from diffusionlab.core.sampling import sample, sampling_defaults
    from diffusionlab.evaluation import digit_metrics
    from diffusionlab.models.loading import load_denoiser
    from diffusionlab.pipelines.conditioning import conditioned

    den = load_denoiser(lora) if full else load_denoiser(BASE, lora=[str(lora)] if lora else ())
    labels, prompts = eval_requests()
    guided, cond = conditioned(den, prompt=prompts, guidance=guidance)
    choice = sampling_defaults(den, None, None, guidance)
    xs = []
    for s in range(0, N, 100):
        idx = range(s, min(N, s + 100))
        xs.append(sample(guided, (len(idx), *den.info.image_shape), sampler=choice.sampler, steps=choice.steps,
                         cond=cond(N)[s:s + len(idx)], generator=per_sample_generators(EVAL_SEED, idx)).float())
    x = torch.cat(xs).clamp(-1, 1)
    out = {}
    for name, judge in judges.items():
        with torch.no_grad():
            p = judge(x)
        out[f"{name}_reward"] = float(p[torch.arange(N), labels].mean())
        out[f"{name}_accuracy"] = float((p.argmax(1) == labels).float().mean())
    m = digit_metrics(x)
    out.update(fd=m["fd"], fd_floor=m["fd_floor"])
    return out


def _judges():
    from diffusionlab.evaluation import load_digit_classifier

    clf = load_digit_classifier()
    indep, acc = independent_classifier()
    return {"reward": lambda x: clf.predict_proba(x), "independent": indep}, acc


def sft_data() -> Path:
    """The chosen images with their prompts as captions: the supervised baseline's data folder."""
    from PIL import Image

    folder = WORK / "sft_data"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    for i, l in enumerate(json.loads(t) for t in (PAIRS / "pairs.jsonl").read_text().splitlines()):
        name = f"{i:05d}.png"
        Image.open(PAIRS / l["chosen"]).save(folder / name)
        rows.append(json.dumps({"file": name, "caption": l["prompt"]}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def trainer_for(kind: str, beta: float | None, steps: int, out: Path, lr: float | None = None):
    from diffusionlab.training import Trainer

    common = dict(max_steps=steps, out_dir=str(out), progress=False, checkpoint_every=steps, batch_size=16,
                  keep_checkpoints=1, **({"lr": lr} if lr else {}))
    if kind in ("dpo", "full"):
        from diffusionlab.training.dpo import dpo_config

        cfg = dpo_config(str(BASE), str(PAIRS), beta=beta, full=kind == "full", **common)
    else:
        from diffusionlab.training.finetune import finetune_config

        cfg = finetune_config(str(BASE), data=str(sft_data()), p_uncond=0.0, val_every=50, **common)
    return Trainer(config=cfg, overwrite=True)


def _val_stats(out: Path, step: int) -> dict:
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if "val_reward_accuracy_ema" in r and r["step"] <= step]
    return {"val_reward_accuracy": val[-1]["val_reward_accuracy_ema"],
            "val_reward_margin": val[-1]["val_reward_margin_ema"]} if val else {}


def stage_runs(betas: list[float], steps: int, every: int, final_guidance: float, sft: bool = True,
               full_lrs: tuple = ()) -> None:
    """The runs of ``betas`` (and the SFT baseline unless ``sft`` is off), added to the results; the
    base is measured once per setup (a later call with the same setup adds runs to the table)."""
    judges, indep_acc = _judges()
    res = _load()
    setup = {"steps": steps, "every": every, "n": N, "guidance": GUIDANCE, "final_guidance": final_guidance,
             "independent_accuracy_on_train_split": indep_acc, "pairs": res.get("pairs", {}).get("n")}
    if res.get("setup") != setup or "base" not in res:
        res = {k: v for k, v in res.items() if k in ("pairs", "cpu")}
        res["setup"] = setup
        res["base"] = {"curve": measure(None, GUIDANCE, judges), "final_cfg": measure(None, final_guidance, judges)}
        _save(res)
    runs = [(f"dpo-beta{b:g}", "dpo", b, None) for b in betas] + ([("sft-chosen", "sft", None, None)] if sft else [])
    runs += [(f"full-beta{betas[0]:g}-lr{lr:g}", "full", betas[0], lr) for lr in full_lrs]
    for name, kind, beta, lr in runs:
        out = WORK / name
        t = trainer_for(kind, beta, steps, out, lr)
        curve, seconds = [{"step": 0, **res["base"]["curve"]}], 0.0
        for stop in range(every, steps + 1, every):
            s = t.train(stop_after=stop)
            seconds = s["train_seconds"]
            m = measure(out, GUIDANCE, judges, full=kind == "full")
            curve.append({"step": stop, **m, **(_val_stats(out, stop) if kind != "sft" else {})})
            print(name, curve[-1], flush=True)
        res[name] = {"kind": kind, "beta": beta, "lr": t.cfg.lr, "batch_size": t.cfg.batch_size,
                     "train_seconds": seconds, "s_per_step": seconds / steps, "curve": curve,
                     "final_cfg": measure(out, final_guidance, judges, full=kind == "full")}
        _save(res)


def stage_picture(run: str, rows: int = 3) -> None:
    """docs/dpo_before_after.png: the first ``rows`` x 10 evaluation samples (digit k in column k,
    the same seeds and prompts as the curves, guidance GUIDANCE), base and DPO adapter alternating
    row by row."""
    from diffusionlab.core.rng import per_sample_generators
    from diffusionlab.core.sampling import sample, sampling_defaults
    from diffusionlab.evaluation.viz import save_labelled_grid
    from diffusionlab.models.loading import load_denoiser
    from diffusionlab.pipelines.conditioning import conditioned

    labels, prompts = eval_requests()
    n = rows * 10
    out = {}
    for name, lora in (("base", None), ("DPO", WORK / run)):
        den = load_denoiser(BASE, lora=[str(lora)] if lora else ())
        guided, cond = conditioned(den, prompt=prompts[:n], guidance=GUIDANCE)
        choice = sampling_defaults(den, None, None, GUIDANCE)
        out[name] = sample(guided, (n, *den.info.image_shape), sampler=choice.sampler, steps=choice.steps, cond=cond(n),
                           generator=per_sample_generators(EVAL_SEED, range(n))).float().clamp(-1, 1)
    grid = torch.cat([out[name][r * 10:(r + 1) * 10] for r in range(rows) for name in ("base", "DPO")])
    path = ROOT / "docs" / "dpo_before_after.png"
    save_labelled_grid(grid, path, nrow=10, col_labels=[str(k) for k in range(10)],
                       row_labels=[name for _ in range(rows) for name in ("base", "DPO")], upscale=2)
    print(f"wrote {path}")


# ------------------------------------------------------------------ report
def stage_report() -> None:
    res = _load()
    setup, pairs = res["setup"], res.get("pairs", {})
    lines = [f"CPU: {res['cpu']}. Base: the demo's text model (runs/demo). Pairs: {pairs.get('n')} from "
             f"`make-pairs --reward digit-confidence` over {pairs.get('prompts')} prompts (three training phrasings "
             f"of each digit) at guidance {pairs.get('guidance'):g}: {pairs.get('candidates_used')} candidates "
             f"({pairs.get('yield', 0):.0%} kept at margin 0.1) in {pairs.get('seconds', 0):.0f} s; mean score "
             f"chosen {pairs.get('chosen_mean', 0):.3f}, rejected {pairs.get('rejected_mean', 0):.3f}.",
             "",
             f"Every run: LoRA rank 4 attn+conv (full-*: every weight, `dpo --full`), {setup['steps']} steps of 16 pairs (DPO) or 16 chosen images "
             f"(SFT, lr {res.get('sft-chosen', {}).get('lr', 0):g}), measured every {setup['every']} steps on "
             f"{setup['n']} samples (20 per digit, training phrasings, held-out seeds) at guidance "
             f"{setup['guidance']:g}. *reward*: the digit classifier's mean probability of the requested digit "
             "(what the pairs were ranked by); *independent*: the same by an MLP trained on the held-out split "
             f"(accuracy {setup['independent_accuracy_on_train_split']:.3f} on the training split), which the reward "
             "never saw; FD: digit-feature FD of the samples to the held-out digits (floor: real digits at the same n). "
             "Implicit reward accuracy / margin: DPO's on the held-out pairs (EMA weights).",
             "",
             "| run | step | reward | reward acc. | independent | independent acc. | FD (floor) | implicit acc. | margin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = sorted((k for k in res if k.startswith("dpo-")), key=lambda k: res[k]["beta"]) + \
        sorted((k for k in res if k.startswith("full-")), key=lambda k: res[k]["lr"]) + \
        [k for k in res if k == "sft-chosen"]
    for name in names:
        for c in res[name]["curve"]:
            lines.append(f"| {name} | {c['step']} | {c['reward_reward']:.3f} | {c['reward_accuracy']:.3f} | "
                         f"{c['independent_reward']:.3f} | {c['independent_accuracy']:.3f} | {c['fd']:.1f} "
                         f"({c['fd_floor']:.1f}) | {c.get('val_reward_accuracy', float('nan')):.2f} | "
                         f"{c.get('val_reward_margin', float('nan')):.2f} |")
    fg = setup["final_guidance"]
    lines += ["", f"At the checkpoint's own guidance (CFG {fg:g}), after {setup['steps']} steps:", "",
              "| model | reward | reward acc. | independent | independent acc. | FD (floor) | s / step |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ["base", *names]:
        c = res[name]["final_cfg"]
        sps = f"{res[name]['s_per_step']:.2f}" if name != "base" else "-"
        lines.append(f"| {name} | {c['reward_reward']:.3f} | {c['reward_accuracy']:.3f} | {c['independent_reward']:.3f} "
                     f"| {c['independent_accuracy']:.3f} | {c['fd']:.1f} ({c['fd_floor']:.1f}) | {sps} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "RESULTS_dpo.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("--n", type=int, default=1000)
    r = sub.add_parser("runs")
    r.add_argument("--betas", default="500,2000")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--every", type=int, default=100)
    r.add_argument("--final-guidance", type=float, default=3.0)
    r.add_argument("--no-sft", action="store_true", help="only the DPO runs (add betas to an existing table)")
    r.add_argument("--full-lrs", default="", help="also full DPO runs (every weight) at the first beta, these lrs")
    sub.add_parser("report")
    pic = sub.add_parser("picture")
    pic.add_argument("--run", default="dpo-beta2000")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.stage == "pairs":
        stage_pairs(a.n)
    elif a.stage == "runs":
        stage_runs([float(b) for b in a.betas.split(",")], a.steps, a.every, a.final_guidance, sft=not a.no_sft,
                   full_lrs=tuple(float(v) for v in a.full_lrs.split(",") if v))
    elif a.stage == "picture":
        stage_picture(a.run)
    else:
        stage_report()


if __name__ == "__main__":
    main()
