"""LoRA fine-tuning measured (issue 26), project venv, one stage at a time. Every run teaches one
digit (``--data mnist --digits 3``) to a trained model in 300 steps and is measured on 300
samples per setting with the digit classifier: the share of threes (argmax) and the feature FD
to the 1,000-image held-out split's threes (``digit_metrics`` with the threes as reference; its
floor is that of 300 real training threes).

- ``lr``: the default learning rate: rank 4, attn+conv on the demo text model, lr in
  ``--lrs`` (unprompted share of threes at scale 1).
- ``table``: for ``--model demo`` (the text demo, runs/demo) or ``--model uncond`` (an
  unconditional MNIST model, runs/uncond: ``train --preset demo --time-budget 300``): rank 1 / 4
  / 16 on attn+conv, rank 4 on attn and on all, and the full fine-tune; adapter size against the
  base's weights file, trainable fraction, share of threes at scales 0, 0.5, 1 without a prompt
  and (text model) with the held-out prompt for 3, FD to the held-out threes.
- ``speed``: seconds per step of LoRA (rank 4, attn+conv) and of the full fine-tune on the same
  base, data and batch, alternated ``--repeats`` times (nothing else running).
- ``report``: bench/RESULTS_lora.md from bench/RESULTS_lora.json.

    .venv/bin/python bench/lora.py lr [--lrs 3e-4,1e-3,3e-3]
    .venv/bin/python bench/lora.py table --model demo
    .venv/bin/python bench/lora.py table --model uncond
    .venv/bin/python bench/lora.py speed
    .venv/bin/python bench/lora.py report
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from diffusionlab.core.devices import cpu_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS_lora.json"
MODELS = {"demo": ROOT / "runs" / "demo", "uncond": ROOT / "runs" / "uncond"}
DIGIT, STEPS, N = 3, 300, 300
CONFIGS = {"r4-attn+conv": dict(rank=4, targets="attn+conv"), "r1-attn+conv": dict(rank=1, targets="attn+conv"),
           "r16-attn+conv": dict(rank=16, targets="attn+conv"), "r4-attn": dict(rank=4, targets="attn"),
           "r4-all": dict(rank=4, targets="all"), "full": dict(full=True)}


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(res: dict) -> None:
    res["cpu"] = cpu_info()
    RESULTS.write_text(json.dumps(res, indent=2, default=str))


def _references():
    from diffusionlab.data.datasets import load_dataset

    train, held = load_dataset("mnist", 32, 1, classes=(DIGIT,))
    g = torch.Generator().manual_seed(0)
    return held, train[torch.randperm(len(train), generator=g)[:N]]


def measure(base, lora, scale: float, prompt: str | None, refs) -> dict:
    """Share of threes and FD to the held-out threes of N samples of base + lora at ``scale``."""
    from diffusionlab.core.sampling import sample_many, sampling_defaults
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.models.latent import to_pixels
    from diffusionlab.models.loading import load_denoiser
    from diffusionlab.pipelines.conditioning import conditioned

    den = load_denoiser(base, lora=[str(lora)] if lora else (), lora_scale=scale if lora else 1.0)
    choice = sampling_defaults(den)
    guided, cond = conditioned(den, prompt=prompt)
    x = sample_many(guided, den.info.image_shape, N, choice.sampler, choice.steps, seed=1, progress=False,
                    cond=cond(N))
    x = to_pixels(den.info, x)
    m = digit_metrics(x, load_digit_classifier(), real_reference=refs[0], real_train=refs[1])
    return {"share": m["class_histogram"][DIGIT] / m["n"], "fd": m["fd"], "fd_floor": m["fd_floor"],
            "confident": m["confident_fraction"]}


def finetune(base: Path, out: Path, lr: float | None = None, **kw) -> dict:
    from diffusionlab.training import Trainer
    from diffusionlab.training.finetune import finetune_config

    fields = dict(digits=(DIGIT,), max_steps=STEPS, out_dir=str(out), progress=False, checkpoint_every=STEPS)
    if lr is not None:
        fields["lr"] = lr
    cfg = finetune_config(str(base), **kw, **fields)
    t = Trainer(config=cfg, overwrite=True)
    summary = t.train()
    total = sum(p.numel() for p in t.model.parameters())
    trainable = sum(p.numel() for p in t.params)
    if t.adapters is not None:
        total -= trainable  # the base's own parameters
    return {"train_seconds": summary["train_seconds"], "s_per_step": summary["train_seconds"] / summary["steps"],
            "trainable": trainable, "base_params": total, "trainable_fraction": trainable / total,
            "lr": cfg.lr, "batch_size": cfg.batch_size, "p_uncond": cfg.p_uncond}


def _base_weights_bytes(base: Path) -> int:
    from diffusionlab.models.checkpoint import find_checkpoint

    return (find_checkpoint(base) / "ema.safetensors").stat().st_size


def _prompts(model: str) -> dict:
    from diffusionlab.text.captions import prompt_for

    return {"none": None, **({"prompt": prompt_for(DIGIT, "heldout")} if model == "demo" else {})}


def stage_lr(lrs: list[float]) -> None:
    res, refs = _load(), _references()
    rows = res.setdefault("lr", {})
    for lr in lrs:
        out = ROOT / "runs" / "lora_bench" / f"demo-lr{lr:g}"
        row = finetune(MODELS["demo"], out, lr=lr)
        row.update(measure(MODELS["demo"], out, 1.0, None, refs))
        rows[f"{lr:g}"] = row
        print(lr, row, flush=True)
        _save(res)


def stage_table(model: str, configs: list[str]) -> None:
    res, refs = _load(), _references()
    table = res.setdefault("table", {}).setdefault(model, {})
    base = MODELS[model]
    prompts = _prompts(model)
    table["base"] = {p: measure(base, None, 1.0, text, refs) for p, text in prompts.items()}
    table["base_weights_bytes"] = _base_weights_bytes(base)
    _save(res)
    for name in configs:
        kw = CONFIGS[name]
        out = ROOT / "runs" / "lora_bench" / f"{model}-{name}"
        row = finetune(base, out, **kw)
        if kw.get("full"):
            row["scales"] = {"1": {p: measure(out, None, 1.0, text, refs) for p, text in prompts.items()}}
        else:
            row["adapter_bytes"] = (out / "adapter_model.safetensors").stat().st_size
            row["scales"] = {f"{s:g}": {p: measure(base, out, s, text, refs) for p, text in prompts.items()}
                             for s in (0.0, 0.5, 1.0)}
        table[name] = row
        print(model, name, json.dumps(row), flush=True)
        _save(res)


def stage_speed(repeats: int, steps: int) -> None:
    """Seconds per step, LoRA vs full, alternated on the demo text model."""
    from diffusionlab.training import Trainer
    from diffusionlab.training.finetune import finetune_config

    res = _load()
    times = {"lora": [], "full": []}
    for _ in range(repeats):
        for kind in ("lora", "full"):
            cfg = finetune_config(str(MODELS["demo"]), full=kind == "full", digits=(DIGIT,), max_steps=steps,
                                  out_dir=str(ROOT / "runs" / "lora_bench" / f"speed-{kind}"), progress=False,
                                  checkpoint_every=0, val_every=0)
            t = Trainer(config=cfg, overwrite=True)
            t.train_step()  # warm-up (allocations, first-call overheads)
            t0 = time.perf_counter()
            for _ in range(steps):
                t.train_step()
            times[kind].append((time.perf_counter() - t0) / steps)
    res["speed"] = {k: {"s_per_step": min(v), "all": v} for k, v in times.items()}
    res["speed"]["ratio_full_over_lora"] = min(times["full"]) / min(times["lora"])
    res["speed"]["batch_size"] = cfg.batch_size
    print(json.dumps(res["speed"], indent=2))
    _save(res)


def _pct(v) -> str:
    return f"{100 * v:.0f}%"


def _frac(v) -> str:
    """A size fraction: one decimal below 10%."""
    return f"{100 * v:.1f}%" if v < 0.1 else _pct(v)


def stage_report() -> None:
    res = _load()
    cpu = res.get("cpu", {})
    lines = ["# LoRA fine-tuning: teaching one digit (issue 26)", "",
             f"CPU: {cpu.get('model')} ({cpu.get('kind')}), 2 cores; project venv; `bench/lora.py` "
             f"(each run {STEPS} steps on `--data mnist --digits {DIGIT}`, {N} samples per setting; share = "
             "the digit classifier's argmax; FD = digit-classifier feature FD to the held-out threes, "
             "floor = 300 real training threes).", ""]
    if "lr" in res:
        lines += ["## Learning rate (demo text model, rank 4, attn+conv, unprompted, scale 1)", "",
                  "| lr | share of threes | FD | confident |", "|---|---|---|---|"]
        for lr, r in sorted(res["lr"].items(), key=lambda kv: float(kv[0])):
            lines.append(f"| {lr} | {_pct(r['share'])} | {r['fd']:.2f} | {r['confident']:.2f} |")
        lines.append("")
    for model, t in res.get("table", {}).items():
        title = {"demo": "the demo's text model (runs/demo)", "uncond": "an unconditional MNIST model (runs/uncond)"}
        prompts = list(t["base"])
        lines += [f"## {title.get(model, model)}", "",
                  "Base: " + ", ".join(f"{p}: share {_pct(v['share'])}, FD {v['fd']:.2f}" for p, v in t["base"].items())
                  + f"; floor FD {next(iter(t['base'].values()))['fd_floor']:.2f}. Base weights "
                  f"{t['base_weights_bytes'] / 1e6:.1f} MB.", ""]
        head = "| run | adapter | of base | trainable | s/step |"
        for s in ("0", "0.5", "1"):
            head += "".join(f" share @{s} {p} |" for p in prompts)
        head += "".join(f" FD @1 {p} |" for p in prompts)
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for name, r in t.items():
            if name in ("base", "base_weights_bytes"):
                continue
            size = r.get("adapter_bytes")
            row = (f"| {name} | {size / 1e3:.0f} KB | {_frac(size / t['base_weights_bytes'])} |" if size else
                   "| full | (a whole checkpoint) | 100% |")
            row += f" {_frac(r['trainable_fraction'])} | {r['s_per_step']:.2f} |"
            for s in ("0", "0.5", "1"):
                sc = r["scales"].get(s)
                row += "".join(f" {_pct(sc[p]['share'])} |" if sc else " - |" for p in prompts)
            row += "".join(f" {r['scales']['1'][p]['fd']:.2f} |" for p in prompts)
            lines.append(row)
        lines.append("")
    if "speed" in res:
        sp = res["speed"]
        lines += ["## Step time, LoRA vs full (demo text model, alternated, nothing else running)", "",
                  f"Batch {sp['batch_size']}: LoRA (rank 4, attn+conv) {sp['lora']['s_per_step']:.3f} s/step, "
                  f"full {sp['full']['s_per_step']:.3f} s/step: full / LoRA = {sp['ratio_full_over_lora']:.2f}.", ""]
    (ROOT / "bench" / "RESULTS_lora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["lr", "table", "speed", "report"])
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    p.add_argument("--model", choices=tuple(MODELS), default="demo")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    if a.stage == "lr":
        stage_lr([float(v) for v in a.lrs.split(",")])
    elif a.stage == "table":
        stage_table(a.model, a.configs.split(","))
    elif a.stage == "speed":
        stage_speed(a.repeats, a.steps)
    stage_report()


if __name__ == "__main__":
    main()
