"""Sampling defaults on TRAINED models (project venv): the held-out check of the grids chosen on
mixtures (bench/defaults_search.py), and flow matching against the demo's VP-v recipe.

    # each deterministic sampler on its top-2 grids from the mixture search, at 10 NFE
    .venv/bin/python bench/trained_defaults.py grids --ckpt runs/demo --nfe 10 --n 300
    # each model at 4 / 8 / 16 / 32 NFE with the given samplers (defaults: the model's 'auto' grid)
    .venv/bin/python bench/trained_defaults.py nfe --ckpt runs/demo --ckpt runs/flow_text --samplers unipc,dpmpp_2m_sde

Text models are sampled on held-out prompts (the demo's evaluation prompts) with the recorded CFG
scale; class-free models unconditionally. Metrics (evaluation.digits.digit_metrics, the demo's):
requested-digit accuracy (text), confident fraction, FD of digit-classifier features to the
held-out digits and FD / floor. Every configuration uses the same per-sample seeds. Results are
cached in bench/cache/trained_defaults.json (keyed by checkpoint step, mode and config); the
markdown goes to bench/RESULTS_defaults_trained.md (grids) and bench/RESULTS_flow_vs_vp.md (nfe).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from defaults_search import choose, cpu_kind, steps_for, summarize  # noqa: E402

import diffusionlab as dl  # noqa: E402
from diffusionlab.apps.demo import _prompts  # noqa: E402
from diffusionlab.core.sampling import default_grid, model_kind, sample_many  # noqa: E402
from diffusionlab.evaluation import digit_metrics, load_digit_classifier  # noqa: E402
from diffusionlab.models.loading import load_denoiser  # noqa: E402
from diffusionlab.pipelines.conditioning import conditioned  # noqa: E402

CACHE = Path("bench/cache/trained_defaults.json")
KEYS = ("requested_accuracy", "confident_fraction", "fd", "fd_floor", "fd_ratio")
CACHED_ONLY = False  # --cached-only: rewrite the report from the cache, rows not measured say so


def load(ckpt: str):
    den = load_denoiser(ckpt)
    latest = Path(ckpt) / "checkpoints" / "latest"
    return den, f"{ckpt}@{latest.read_text().strip()}" if latest.is_file() else ckpt


def draw(den, n: int, sampler: str, steps: int, schedule: str) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    info = den.info
    t0 = time.perf_counter()
    if info.cond.kind == "text":
        prompts, labels = _prompts(n)
        guided, cond = conditioned(den, prompt=prompts)
        x = sample_many(guided, info.image_shape, n, sampler, steps, seed=0, cond=cond(n), schedule=schedule,
                        progress=False)
    else:
        labels = None
        x = sample_many(den, info.image_shape, n, sampler, steps, seed=0, schedule=schedule, progress=False)
    return x, labels, time.perf_counter() - t0


def measure(den, tag: str, mode: str, sampler: str, budget: int, schedule: str, n: int, cache: dict, clf) -> dict:
    steps = steps_for(sampler, budget)
    key = json.dumps([tag, mode, sampler, budget, schedule, n])
    if key not in cache and CACHED_ONLY:
        return None
    if key not in cache:
        x, labels, secs = draw(den, n, sampler, steps, schedule)
        m = digit_metrics(x, clf, requested=labels)
        cache[key] = {**{k: m[k] for k in KEYS if k in m}, "steps": steps, "seconds": round(secs, 1)}
        CACHE.write_text(json.dumps(cache, indent=0))
    row = dict(cache[key])
    row.update(sampler=sampler, nfe=budget, grid=schedule)
    return row


def fmt(row: dict) -> str:
    acc = f"{row['requested_accuracy']:.3f}" if "requested_accuracy" in row else "-"
    return f"{acc} | {row['confident_fraction']:.3f} | {row['fd']:.2f} | {row['fd_ratio']:.2f}x"


def header(args, dens) -> list[str]:
    return [f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; command: "
            f"`.venv/bin/python bench/trained_defaults.py {' '.join(sys.argv[1:])}`; CPU: {cpu_kind()}",
            f"- {args.n} samples per row, the same per-sample seeds in every row; EMA weights; "
            "text models: held-out prompts at the recorded CFG scale; metrics of evaluation.digits "
            "(accuracy = requested digit, confident = top class > 0.9, FD of digit-classifier features "
            "to the 1,000 held-out digits and its ratio to the real-data floor)", ""]


def run_grids(args, cache, clf) -> list[str]:
    search = json.loads(Path(args.search).read_text())
    ranked = choose(summarize(search, search["meta"]["n"]), search["meta"]["budgets"])
    lines = ["# Default grids confirmed on trained models", ""]
    for ckpt in args.ckpt:
        den, tag = load(ckpt)
        kind = model_kind(den.info)
        lines += header(args, [den]) if not lines[2:] else []
        lines += [f"## {ckpt} ({kind}, process {den.info.process})", "",
                  "| sampler | grid | mixture rank | NFE | accuracy | confident | FD | FD / floor | s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in args.samplers.split(",") if args.samplers else sorted(ranked[kind]):
            for rank, (grid, _, _) in enumerate(ranked[kind][name][:2], 1):
                for b in args.nfe:
                    r = measure(den, tag, "grids", name, b, grid, args.n, cache, clf)
                    if r is None:
                        lines.append(f"| {name} | {grid} | {rank} | {b} | not measured (session time) | | | | |")
                        continue
                    lines.append(f"| {name} | {grid} | {rank} | {b} | {fmt(r)} | {r['seconds']:.0f} |")
                    print(lines[-1], flush=True)
        lines.append("")
    return lines


def run_nfe(args, cache, clf) -> list[str]:
    lines = ["# Flow matching vs the demo's VP-v recipe at the same training steps", ""]
    lines += header(args, None)
    lines += ["| model | sampler | grid | NFE | accuracy | confident | FD | FD / floor | s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for ckpt in args.ckpt:
        den, tag = load(ckpt)
        for name in args.samplers.split(","):
            grid = args.schedule or "auto"
            shown = default_grid(den.info, name, 10) if grid == "auto" else grid
            for b in args.nfe:
                r = measure(den, tag, "nfe", name, b, grid, args.n, cache, clf)
                lines.append(f"| {ckpt} ({den.info.process}) | {name} | {shown} | {b} | {fmt(r)} | {r['seconds']:.0f} |")
                print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("grids", "nfe"))
    ap.add_argument("--ckpt", action="append", required=True)
    ap.add_argument("--nfe", default=None, help="comma list (grids: 10; nfe: 4,8,16,32)")
    ap.add_argument("--n", type=int, default=None, help="samples per row (grids: 300; nfe: 500)")
    ap.add_argument("--samplers", default=None)
    ap.add_argument("--schedule", default=None, help="nfe mode: a fixed grid instead of auto")
    ap.add_argument("--search", default="bench/cache/defaults_search.json")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cached-only", action="store_true", help="report from the cache without sampling")
    args = ap.parse_args(argv)
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    args.nfe = [int(v) for v in (args.nfe or ("10" if args.mode == "grids" else "4,8,16,32")).split(",")]
    args.n = args.n or (300 if args.mode == "grids" else 500)
    torch.set_num_threads(args.threads)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    clf = load_digit_classifier()
    lines = run_grids(args, cache, clf) if args.mode == "grids" else run_nfe(args, cache, clf)
    out = Path(args.out or ("bench/RESULTS_defaults_trained.md" if args.mode == "grids" else "bench/RESULTS_flow_vs_vp.md"))
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
