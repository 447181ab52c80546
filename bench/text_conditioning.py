"""Text-conditional MNIST (issue 16): prompt accuracy on training and held-out phrasings at
several guidance scales, the negative prompt on the empty prompt, and text vs class conditioning
at the same budget.

    .venv/bin/python bench/text_conditioning.py --run runs/demo --class-run runs/class --n 500

``--run`` is a text run (e.g. `make demo`'s runs/demo, trained by `diffusionlab demo`, or
`diffusionlab train --preset demo-text`); ``--class-run`` a class run of the same budget
(`diffusionlab train --preset demo --cond class --time-budget 600 --out runs/class`). Every cell
samples through ``pipelines.conditioning.conditioned`` - what `diffusionlab sample --prompt P
--guidance S` does - with the checkpoint's sampler and steps, digit i % 10 for sample i
(phrasing i // 10 of the split, cycled) and seeds 0..n-1. Writes bench/RESULTS_text.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--class-run", default="runs/class")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--scales", default="1,3,5")
    p.add_argument("--negative", default="the digit seven")
    p.add_argument("--out", default=str(HERE / "RESULTS_text.md"))
    a = p.parse_args()

    import diffusionlab as dl
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.pipelines.conditioning import conditioned
    from diffusionlab.text import prompt_for

    bf16 = torch.bfloat16 if cpu_info()["fast_bf16"] else None
    classifier = load_digit_classifier()
    labels = torch.arange(a.n) % 10
    rows = []

    def cell(name, den, sampler, steps, requested=None, avoid=None, **kw):
        guided, cond = conditioned(den, **kw)
        t0 = time.perf_counter()
        x = dl.sample_many(guided, den.info.image_shape, a.n, sampler, steps, seed=0, cond=cond(a.n), progress=False)
        secs = time.perf_counter() - t0
        m = digit_metrics(x, classifier, requested=requested, avoid=avoid)
        rows.append(dict(name=name, sampler=f"{sampler} {steps}", seconds=secs, **{k: m.get(k) for k in (
            "requested_accuracy", "confident_fraction", "class_entropy", "fd_ratio", "avoided_share",
            "rest_confident_fraction")}))
        print({k: v for k, v in rows[-1].items()}, flush=True)
        return rows[-1]

    den = dl.load_denoiser(a.run, autocast_dtype=bf16)
    info = den.info
    sampler, steps = info.default_sampler, info.default_steps
    meta = json.loads((Path(a.run) / "run.json").read_text())
    split_prompts = {s: [prompt_for(int(k), s, i // 10) for i, k in enumerate(labels)] for s in ("train", "heldout")}
    for s in (float(v) for v in a.scales.split(",")):
        for split in ("train", "heldout"):
            cell(f"text, {split} phrasings, scale {s:g}", den, sampler, steps, requested=labels,
                 prompt=split_prompts[split], guidance=s)
    empty = cell('text, empty prompt ""', den, sampler, steps, avoid=7, prompt="")
    neg = cell(f'text, "" with --negative-prompt "{a.negative}" --guidance 3', den, sampler, steps, avoid=7,
               prompt="", negative_prompt=a.negative, guidance=3.0)
    cls_meta = None
    if a.class_run and (Path(a.class_run) / "checkpoints").is_dir():
        cden = dl.load_denoiser(a.class_run, autocast_dtype=bf16)
        cls_meta = json.loads((Path(a.class_run) / "run.json").read_text())
        from diffusionlab.core.cfg import classifier_free

        # one class per sample (conditioned takes one class): the same CFG wrapper it builds
        for smp, st in ((cden.info.default_sampler, cden.info.default_steps), (sampler, steps)):
            t0 = time.perf_counter()
            guided = classifier_free(cden, 3.0)
            x = dl.sample_many(guided, cden.info.image_shape, a.n, smp, st, seed=0, cond=dl.Cond(labels=labels),
                               progress=False)
            secs = time.perf_counter() - t0
            m = digit_metrics(x, classifier, requested=labels)
            rows.append(dict(name=f"class (runs/class), scale 3", sampler=f"{smp} {st}", seconds=secs,
                             **{k: m.get(k) for k in ("requested_accuracy", "confident_fraction", "class_entropy",
                                                      "fd_ratio", "avoided_share", "rest_confident_fraction")}))
            print(rows[-1], flush=True)
    cpu = cpu_info()

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    lines = ["# Text-conditional MNIST (issue 16)", "",
             f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `python bench/text_conditioning.py --run {a.run} --class-run {a.class_run} --n {a.n}`",
             f"- CPU: {cpu['model']}, {cpu['kind']}; {os.cpu_count()} cores",
             f"- text run: {meta['summary']['steps']} steps in {meta['summary']['train_seconds']:.0f} s "
             f"(argv {' '.join(meta.get('argv', []))}); encoder {info.cond.encoder}",
             f"- class run: {cls_meta['summary']['steps']} steps in {cls_meta['summary']['train_seconds']:.0f} s"
             if cls_meta else "- class run: none",
             f"- {a.n} samples per row, digit i % 10 for sample i, seeds 0..{a.n - 1}", "",
             "| condition | sampler | requested-digit accuracy | confident | class entropy | FD / floor | share of 7s | "
             "confident of the rest | seconds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['sampler']} | {f(r['requested_accuracy'])} | {f(r['confident_fraction'])} | "
                     f"{f(r['class_entropy'])} | {f(r['fd_ratio'], '{:.2f}')}x | {f(r['avoided_share'])} | "
                     f"{f(r['rest_confident_fraction'])} | {r['seconds']:.0f} |")
    # the bar guards the rest against damage: a drop of at most 0.05 (a rise is reported, not failed)
    ok = (neg["avoided_share"] <= 0.03 and neg["avoided_share"] <= empty["avoided_share"] / 3
          and empty["rest_confident_fraction"] - neg["rest_confident_fraction"] <= 0.05)
    lines += ["", f'Negative prompt "{a.negative}" on the empty prompt at scale 3: share of 7s '
              f"{empty['avoided_share']:.3f} -> {neg['avoided_share']:.3f} (bar <= 0.03 and <= "
              f"{empty['avoided_share'] / 3:.3f}); confident fraction of the rest {empty['rest_confident_fraction']:.3f} "
              f"-> {neg['rest_confident_fraction']:.3f} (bar: no drop of more than 0.05; a rise of more than 0.05 would "
              f"fail a two-sided reading). {'Met.' if ok else 'NOT met.'}", ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
