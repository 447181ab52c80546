"""Few-step generation measured (issue 28), project venv, one stage at a time, nothing else running.

Teachers: the demo's text model (runs/demo, `make demo`) and an unconditional MNIST model
(runs/uncond: `train --preset demo --time-budget 480 --out runs/uncond`). Students are made by the
commands a user runs (`diffusionlab distill`, `diffusionlab train --few-step consistency`), each
with a time budget, into runs/distill_bench/<name>.

- ``distill --teacher text|uncond --method consistency|progressive --seconds S``: one student;
- ``scratch --seconds S``: consistency training from scratch on the unconditional data, given the
  teacher's training time plus a distillation's (equal total CPU time);
- ``eval``: N samples (500) per row, seeds 0..N-1: students at 1, 2 and 4 network evaluations
  (NFE), the teacher at 1, 2 and 4 NFE with each of ``TEACHER_SAMPLERS`` (the best reported; CFG
  costs 2 NFE a step, so the text teacher's 1 NFE is unguided and its 2 NFE one guided step) and at
  its recorded default (the text model: SDE-DPM-Solver++(2M), 16 steps with CFG 3 = 32 NFE). Text
  rows prompt digit i % 10 for sample i with the held-out phrasings at guidance 3. Metrics: requested-digit
  accuracy (text), confident fraction, FD / floor of the digit classifier's features, images per second;
- ``picture``: docs/distill.png (the same seeds and prompts: the teacher at 32 and 2 NFE, the
  consistency student at 1 / 2 / 4 steps, the progressive student at 4);
- ``report``: bench/RESULTS_distill.md from bench/RESULTS_distill.json.

    .venv/bin/python bench/distill.py distill --teacher text --method consistency --seconds 300
    .venv/bin/python bench/distill.py distill --teacher text --method progressive --seconds 240
    .venv/bin/python bench/distill.py distill --teacher uncond --method consistency --seconds 240
    .venv/bin/python bench/distill.py distill --teacher uncond --method progressive --seconds 240
    .venv/bin/python bench/distill.py scratch --seconds 240
    .venv/bin/python bench/distill.py eval
    .venv/bin/python bench/distill.py picture
    .venv/bin/python bench/distill.py report
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS_distill.json"
WORK = ROOT / "runs" / "distill_bench"
TEACHERS = {"text": ROOT / "runs" / "demo", "uncond": ROOT / "runs" / "uncond"}
TEACHER_SAMPLERS = ("ddim", "dpmpp_2m", "euler_ancestral")
GUIDANCE = 3.0
N = 500


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(res: dict) -> None:
    from diffusionlab.core.devices import cpu_info

    res["cpu"] = cpu_info()
    RESULTS.write_text(json.dumps(res, indent=2, default=str))


def _cli(*argv) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffusionlab", *map(str, argv)], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def _train_seconds(run: Path) -> float:
    """Training CPU seconds of a run (every progressive stage's too)."""
    total = 0.0
    for rj in [run / "run.json", *sorted((run / "stages").glob("*/run.json"))]:
        if rj.is_file():
            total += json.loads(rj.read_text())["summary"]["train_seconds"]
    return total


def distill(a) -> None:
    out = WORK / f"{a.teacher}-{a.method}"
    wall = _cli("distill", "--ckpt", TEACHERS[a.teacher], "--method", a.method, "--time-budget", a.seconds,
                "--out", out, "--overwrite", *(["--steps-to", a.steps_to] if a.steps_to else []))
    res = _load()
    res.setdefault("runs", {})[out.name] = {"teacher": str(TEACHERS[a.teacher].relative_to(ROOT)),
                                            "method": a.method, "budget_s": a.seconds, "wall_s": wall,
                                            "train_s": _train_seconds(out)}
    _save(res)


def scratch(a) -> None:
    out = WORK / "uncond-scratch"
    teacher_s = _train_seconds(TEACHERS["uncond"])
    budget = a.total if a.total else teacher_s + a.seconds
    wall = _cli("train", "--preset", "demo", "--few-step", "consistency", "--time-budget", round(budget),
                "--out", out, "--overwrite", "--sample-every", 0, "--no-progress")
    res = _load()
    res.setdefault("runs", {})[out.name] = {"teacher": None, "method": "consistency training (from scratch)",
                                            "budget_s": budget, "wall_s": wall, "train_s": _train_seconds(out),
                                            "equal_to": None if a.total else
                                            f"teacher {teacher_s:.0f} s + distillation {a.seconds} s"}
    _save(res)


def _rows(kind: str) -> list[tuple]:
    """(row name, run, sampler, steps, guidance, nfe) of one teacher kind."""
    guided = kind == "text"
    t = TEACHERS[kind]
    rows = []
    for sampler in TEACHER_SAMPLERS:
        if guided:
            rows += [("teacher", t, sampler, 1, 1.0, 1), ("teacher", t, sampler, 1, GUIDANCE, 2),
                     ("teacher", t, sampler, 2, GUIDANCE, 4)]
        else:
            rows += [("teacher", t, sampler, n, None, n) for n in (1, 2, 4)]
    rows.append(("teacher (recorded default)", t, None, None, GUIDANCE if guided else None, None))
    for name in (f"{kind}-consistency", f"{kind}-progressive", f"{kind}-scratch"):
        run = WORK / name
        if (run / "checkpoints").is_dir():
            sampler = "consistency" if "progressive" not in name else "ddim"
            rows += [(name.split("-", 1)[1], run, sampler, n, GUIDANCE if guided else None, n) for n in (1, 2, 4)]
    return rows


def evaluate(a) -> None:
    import diffusionlab as dl
    from diffusionlab.core.sampling import sampling_defaults
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.pipelines.conditioning import conditioned
    from diffusionlab.text import prompt_for

    torch.set_num_threads(2)
    classifier = load_digit_classifier()
    labels = torch.arange(a.n) % 10
    prompts = [prompt_for(int(k), "heldout", i // 10) for i, k in enumerate(labels)]
    res = _load()
    out = []
    for kind in a.kinds.split(","):
        for name, run, sampler, steps, guidance, nfe in _rows(kind):
            den = dl.load_denoiser(run)
            kw = dict(prompt=prompts, guidance=guidance) if kind == "text" else {}
            guided, cond = conditioned(den, **kw)
            choice = sampling_defaults(den, sampler, steps, guidance)
            t0 = time.perf_counter()
            x, info = _sample(dl, guided, den, a.n, choice, cond)
            secs = time.perf_counter() - t0
            m = digit_metrics(x, classifier, requested=labels if kind == "text" else None)
            row = dict(kind=kind, name=name, run=str(Path(run).relative_to(ROOT)), sampler=choice.sampler,
                       steps=choice.steps, guidance=guidance, calls=info, nfe=_nfe(name, guidance, info),
                       seconds=secs, images_per_s=a.n / secs,
                       **{k: m.get(k) for k in ("requested_accuracy", "confident_fraction", "fd", "fd_floor",
                                                "fd_ratio", "class_entropy")})
            out.append(row)
            print(json.dumps(row), flush=True)
    res["eval"] = [r for r in res.get("eval", []) if r["kind"] not in a.kinds.split(",")] + out
    res["n"] = a.n
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    _save(res)


def _nfe(name: str, guidance, calls: int) -> int:
    """Network evaluations per sample: a teacher under CFG (scale other than 1) runs the
    conditional and the null pass in one batched call, 2 evaluations a call; a student takes its
    scale as an input, 1 a call."""
    return calls * (2 if name.startswith("teacher") and guidance not in (None, 1.0) else 1)


def _sample(dl, guided, den, n, choice, cond):
    """n samples at the choice's sampler and steps; returns (x, NFE per sample)."""
    xs, nfe = [], None
    for start in range(0, n, 250):
        idx = range(start, min(n, start + 250))
        if cond.positive is not None and cond.positive.batch_size == n:  # one prompt per sample
            c = cond.positive[start:idx.stop]
            c = c.with_guidance(cond.guidance) if cond.guidance is not None else c
        else:
            c = cond(len(idx))
        x, info = dl.sample(guided, (len(idx), *den.info.image_shape), choice.sampler, choice.steps, cond=c,
                            generator=dl.per_sample_generators(0, idx), return_info=True)
        xs.append(x.float())
        nfe = info["nfe"]
    return torch.cat(xs), nfe


def picture(a) -> None:
    import diffusionlab as dl
    from diffusionlab.evaluation.viz import save_labelled_grid
    from diffusionlab.pipelines.conditioning import conditioned
    from diffusionlab.text import prompt_for

    labels = torch.arange(10)
    prompts = [prompt_for(int(k), "heldout", 0) for k in labels]
    rows, names = [], []
    for label, run, sampler, steps, guidance in [
            ("teacher, 32 NFE", TEACHERS["text"], None, None, GUIDANCE),
            ("teacher, 2 NFE", TEACHERS["text"], a.teacher_sampler, 1, GUIDANCE),
            ("consistency, 1 step", WORK / "text-consistency", "consistency", 1, GUIDANCE),
            ("consistency, 2 steps", WORK / "text-consistency", "consistency", 2, GUIDANCE),
            ("consistency, 4 steps", WORK / "text-consistency", "consistency", 4, GUIDANCE),
            ("progressive, 4 steps", WORK / "text-progressive", "ddim", 4, GUIDANCE)]:
        if not (Path(run) / "checkpoints").is_dir():
            continue
        den = dl.load_denoiser(run)
        guided, cond = conditioned(den, prompt=prompts, guidance=guidance)
        c = cond.positive if cond.guidance is None else cond.positive.with_guidance(cond.guidance)
        rows.append(dl.sample(guided, (10, *den.info.image_shape), sampler, steps, cond=c, seed=3).float())
        names.append(label)
    path = save_labelled_grid(torch.cat(rows), ROOT / "docs" / "distill.png", nrow=10, row_labels=names)
    from PIL import Image  # a README asset: 32 grey levels keep it under 50 KB and look the same

    Image.open(path).convert("L").quantize(32).save(path, optimize=True)


def report(a) -> None:
    res = _load()
    cpu = res.get("cpu", {})
    lines = ["# Few-step generation (bench/distill.py)", "",
             f"CPU: {cpu.get('model', '?')}, {cpu.get('kind', cpu.get('isa', '?'))}; {res.get('n', N)} samples per row, "
             "seeds 0..n-1. Text rows: digit i % 10 with held-out phrasings, guidance 3. FD / floor: the digit "
             "classifier's feature FD against the held-out digits over the same distance for real digits. NFE: "
             "network evaluations per sample (the teacher's CFG step is 2).", "",
             f"date: {res.get('date', '?')}", "",
             "Command: `.venv/bin/python bench/distill.py distill --teacher text|uncond --method consistency|progressive "
             "--seconds 300|240`, `scratch --seconds 240`, `eval`, `picture`, `report` (module docstring).", "",
             "## Runs", "", "| run | method | CPU seconds (training) |", "|---|---|---:|"]
    for name, r in res.get("runs", {}).items():
        lines.append(f"| {name} | {r['method']} | {r['train_s']:.0f} |")
    for kind in ("text", "uncond"):
        rows = [r for r in res.get("eval", []) if r["kind"] == kind]
        if not rows:
            continue
        lines += ["", f"## {'Text model (runs/demo)' if kind == 'text' else 'Unconditional MNIST model (runs/uncond)'}", "",
                  "| model | sampler | steps | NFE | accuracy | confident | FD / floor | images / s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:  # rows written before "calls" was recorded counted batched CFG calls as NFE
            if "calls" not in r:
                r["calls"], r["nfe"] = r["nfe"], _nfe(r["name"], r["guidance"], r["nfe"])
        best = {}
        for r in rows:  # the teacher: its best sampler at each NFE (by FD / floor), all in the JSON
            key = (r["name"], r["nfe"])
            if r["name"] != "teacher" or key not in best or r["fd_ratio"] < best[key]["fd_ratio"]:
                best[key] = r
        for r in sorted(best.values(), key=lambda r: (r["name"] != "teacher (recorded default)", r["name"], r["nfe"])):
            acc = f"{r['requested_accuracy']:.3f}" if r.get("requested_accuracy") is not None else "-"
            lines.append(f"| {r['name']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {acc} | "
                         f"{r['confident_fraction']:.3f} | {r['fd_ratio']:.2f} | {r['images_per_s']:.0f} |")
    (ROOT / "bench" / "RESULTS_distill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    d = sub.add_parser("distill")
    d.add_argument("--teacher", choices=tuple(TEACHERS), required=True)
    d.add_argument("--method", choices=("consistency", "progressive"), required=True)
    d.add_argument("--seconds", type=int, default=240)
    d.add_argument("--steps-to", type=int, default=None)
    s = sub.add_parser("scratch")
    s.add_argument("--seconds", type=int, default=240)
    s.add_argument("--total", type=int, default=None, help="the whole budget instead (not equal total CPU time)")
    e = sub.add_parser("eval")
    e.add_argument("--n", type=int, default=N)
    e.add_argument("--kinds", default="text,uncond")
    pic = sub.add_parser("picture")
    pic.add_argument("--teacher-sampler", default="dpmpp_2m")
    sub.add_parser("report")
    a = p.parse_args()
    {"distill": distill, "scratch": scratch, "eval": evaluate, "picture": picture, "report": report}[a.stage](a)


if __name__ == "__main__":
    main()
