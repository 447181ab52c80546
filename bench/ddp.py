"""Multi-process training measured (issue 29), project venv, nothing else running.

- ``cpu``: the demo recipe (``train --preset demo``, batch 64) for ``--steps`` optimizer steps in
  one process with 2 threads, and under ``torchrun --nproc-per-node 2`` with 1 thread each (gloo),
  the same global batch, alternated ``--repeats`` times; images per second of training from each
  run's summary. On a 2-core machine no speed-up is expected: the two processes share the cores
  the one process uses, and pay the all-reduce.
- ``gpu`` (when a GPU is available): the demo model and a 4x wider one (``--dim`` x 4) on one GPU,
  fp32 / bf16 / bf16 with ``--compile``: images per second (after the first 10 steps: compilation
  and warm-up) and peak GPU memory.
- ``report``: bench/RESULTS_ddp.md from bench/RESULTS_ddp.json.

    .venv/bin/python bench/ddp.py cpu
    .venv/bin/python bench/ddp.py gpu
    .venv/bin/python bench/ddp.py report
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS_ddp.json"


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(res: dict) -> None:
    from diffusionlab.core.devices import cpu_info

    res["cpu"] = cpu_info()
    RESULTS.write_text(json.dumps(res, indent=2, default=str))


def _train(launcher: list, threads: int, steps: int, out: Path, *extra) -> dict:
    cmd = [*launcher, "-m", "diffusionlab", "train", "--preset", "demo", "--steps", str(steps), "--out", str(out),
           "--threads", str(threads), "--val-every", "0", "--sample-every", "0", "--checkpoint-every", "0",
           "--guide-at", "0.99", "--no-progress", "--overwrite", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    run = json.loads((out / "run.json").read_text())
    summary, batch = run["summary"], run["config"]["batch_size"]
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"], "wall_seconds": wall,
            "images_per_s": summary["steps"] * batch / summary["train_seconds"]}


def cpu(a) -> None:
    res = _load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, launcher, threads in (
                    ("1 process x 2 threads", [sys.executable], 2),
                    ("2 processes x 1 thread (torchrun, gloo)",
                     [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"], 1)):
                row = {"setting": name, "repeat": r, **_train(launcher, threads, a.steps, Path(tmp) / "run")}
                print(json.dumps(row), flush=True)
                rows.append(row)
    res["cpu_runs"] = {"steps": a.steps, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    _save(res)


def gpu(a) -> None:
    import torch

    from diffusionlab.training import Trainer
    from diffusionlab.training.config import demo_config, default_model

    if not torch.cuda.is_available():
        print("no GPU here: nothing measured")
        return
    res = _load()
    rows = []
    base = demo_config().model
    for width, model in (("demo", base), ("4x wider", default_model(**{**base.__dict__, "dim": base.dim * 4}))):
        for precision, compiled in (("fp32", False), ("bf16", False), ("bf16", True)):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = demo_config(model=model, device="cuda", precision=precision, compile=compiled,
                                  max_steps=a.steps, time_budget=None, out_dir=tmp, val_every=0, sample_every=0,
                                  checkpoint_every=0, guide_at=None, progress=False, batch_size=a.batch)
                t = Trainer(config=cfg)
                t.train(stop_after=10)  # compilation and warm-up
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t0, s0 = time.perf_counter(), t.step
                t.train()
                torch.cuda.synchronize()
                secs = time.perf_counter() - t0
                row = {"model": width, "parameters": sum(p.numel() for p in t.model.parameters()),
                       "precision": precision, "compile": compiled, "batch": a.batch,
                       "images_per_s": (t.step - s0) * a.batch / secs,
                       "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                       "device": torch.cuda.get_device_name()}
                print(json.dumps(row), flush=True)
                rows.append(row)
    res["gpu"] = rows
    _save(res)


def report(a) -> None:
    res = _load()
    machine = res.get("cpu", {})
    lines = ["# Multi-process training (bench/ddp.py)", "",
             f"Machine: {machine.get('model')}, {os.cpu_count()} cores, CPU kind {machine.get('kind')}", "",
             f"date: {(res.get('cpu_runs') or {}).get('date', '?')}", ""]
    runs = res.get("cpu_runs")
    if runs:
        lines += [f"`python bench/ddp.py cpu`: the demo recipe (`train --preset demo`), global batch 64, "
                  f"{runs['steps']} steps per run, alternated.", "",
                  "| setting | repeat | steps | train s | img/s |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['setting']} | {r['repeat']} | {r['steps']} | {r['train_seconds']:.1f} | "
                  f"{r['images_per_s']:.1f} |" for r in runs["rows"]]
        mean = {}
        for r in runs["rows"]:
            mean.setdefault(r["setting"], []).append(r["images_per_s"])
        (one, two) = [sum(v) / len(v) for v in mean.values()]
        lines += ["", f"Mean img/s: 1 process {one:.1f}, 2 processes {two:.1f} (ratio {two / one:.2f})."]
    if res.get("gpu"):
        lines += ["", "`python bench/ddp.py gpu`:", "", "| model | parameters | precision | compile | batch | img/s | "
                  "peak GiB | device |", "|---|---:|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['precision']} | {r['compile']} | {r['batch']} "
                  f"| {r['images_per_s']:.0f} | {r['peak_memory_gib']:.2f} | {r['device']} |" for r in res["gpu"]]
    else:
        lines += ["", "GPU: none was available to this measurement."]
    (ROOT / "bench" / "RESULTS_ddp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--steps", type=int, default=60)
    c.add_argument("--repeats", type=int, default=2)
    g = sub.add_parser("gpu")
    g.add_argument("--steps", type=int, default=60)
    g.add_argument("--batch", type=int, default=128)
    sub.add_parser("report")
    a = p.parse_args()
    {"cpu": cpu, "gpu": gpu, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main()
