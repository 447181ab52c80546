"""Assemble bench/RESULTS.md from the stage reports that `make bench` (re)writes.

    python bench/report.py            # -> bench/RESULTS.md
    python bench/report.py --demo runs/demo   # first take that run's report.md as RESULTS_demo.md

Every stage writes its own markdown (with its date and command) and plots; this script only
puts them together, in order, under one header, so RESULTS.md is always a regenerated file and
never edited by hand. Stages that `make bench` does not run (the likelihood and trained-sampler
reports, made by their own targets) are included when present, with their own dates. The
hand-written interpretation of past runs lives in bench/NOTES.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re

import common

HERE = os.path.dirname(os.path.abspath(__file__))

# (file, title, the command that regenerates it); `make bench` runs the first five
STAGES = [
    ("RESULTS_throughput.md", "Training throughput vs the peers (bench venv)", "make bench-throughput"),
    ("RESULTS_throughput_project_venv.md", "Training throughput, ours in the project venv",
     "make bench-throughput"),
    ("RESULTS_samplers.md", "Sampler accuracy vs NFE on analytic mixtures", "make bench-samplers"),
    ("RESULTS_metrics.md", "Metric equivalence with the reference implementations", "make bench-metrics"),
    ("RESULTS_quality.md", "Quality at a fixed training budget vs the peers", "make bench-quality"),
    ("RESULTS_trained_samplers.md", "Fast samplers on a trained MNIST model (not part of make bench)",
     ".venv/bin/python bench/trained_samplers.py --ckpt runs/demo"),
    ("RESULTS_likelihood.md", "Likelihood: VLB and ODE bits/dim (not part of make bench)", "make bench-likelihood"),
    ("RESULTS_class_guidance.md", "Class-conditional guidance on MNIST (not part of make bench)",
     ".venv/bin/python bench/class_guidance.py --n 500"),
    ("RESULTS_dit_vs_unet.md", "DiT vs U-Net, class-conditional, same budget (not part of make bench)",
     ".venv/bin/python bench/dit_vs_unet.py --budget 300 --n 500"),
    ("RESULTS_text.md", "Text-conditional MNIST: prompts, negative prompts, text vs class (not part of make bench)",
     ".venv/bin/python bench/text_conditioning.py --run runs/demo --class-run runs/class --n 500"),
    ("RESULTS_pipelines.md", "Inpainting, img2img and classifier guidance (not part of make bench)",
     ".venv/bin/python bench/pipelines.py --ckpt runs/demo --n 500 --classifier runs/classifier600"),
    ("RESULTS_superres.md", "Super-resolution 16 -> 32 (SR3) vs bicubic (not part of make bench)",
     ".venv/bin/python bench/superres.py --ckpt runs/sr --n 500"),
    ("RESULTS_latent.md", "Latent diffusion: autoencoders and the small Stable Diffusion (not part of make bench)",
     ".venv/bin/python bench/latent.py ae && .venv/bin/python bench/latent.py text --ae runs/ae_f2c4"),
    ("RESULTS_serve.md", "The live page: latency, load, refusals (not part of make bench)",
     ".venv/bin/python bench/serve_load.py --runs runs --text demo --class class"),
    ("RESULTS_lora.md", "LoRA fine-tuning: teaching one digit, ranks and target sets vs full (not part of make bench)",
     ".venv/bin/python bench/lora.py lr && .venv/bin/python bench/lora.py table --model demo && "
     ".venv/bin/python bench/lora.py table --model uncond && .venv/bin/python bench/lora.py speed"),
    ("RESULTS_dpo.md", "Diffusion-DPO on the demo's text model: reward, an independent judge, FD, vs SFT (not part of make bench)",
     ".venv/bin/python bench/dpo.py pairs --n 1000 && .venv/bin/python bench/dpo.py runs --betas 500,2000,5000 "
     "--steps 300 --every 100 && .venv/bin/python bench/dpo.py report"),
    ("RESULTS_distill.md", "Few-step generation: distillation and consistency training (not part of make bench)",
     ".venv/bin/python bench/distill.py distill/scratch/eval/picture/report (bench/distill.py docstring)"),
    ("RESULTS_ddp.md", "Multi-process training: 2 processes vs 1 (not part of make bench)",
     ".venv/bin/python bench/ddp.py cpu && .venv/bin/python bench/ddp.py report"),
    ("RESULTS_reliability.md", "Reliability: kill trials, injected faults, fuzzed input (not part of make bench)",
     "make test-reliability"),
    ("RESULTS_bridges.md", "Bridges: ONNX Runtime vs PyTorch, the diffusers layout vs ours (not part of make bench)",
     ".venv/bin/python bench/bridges.py"),
    ("RESULTS_demo_avx2.md", "The make demo run at the AVX2 machine's step count (not part of make bench)",
     "see the section"),
    ("RESULTS_core_refactor.md", "Code shape before and after the core refactor (not part of make bench)",
     "python3 bench/code_metrics.py [SRC]"),
    ("RESULTS_defaults_search.md", "Default grids per model kind and sampler, chosen on mixtures (issue 23)",
     ".venv/bin/python bench/defaults_search.py --mixtures 16 --n 3000 --stochastic"),
    ("RESULTS_defaults_vs_diffusers.md", "Ours at defaults vs diffusers on held-out mixtures (issue 23)",
     ".venv-bench/bin/python bench/defaults_vs_diffusers.py --n 20000 --nfe 5,10,20"),
    ("RESULTS_defaults_trained.md", "Default grids confirmed on the trained demo models (issue 23)",
     ".venv/bin/python bench/trained_defaults.py grids --ckpt runs/demo --ckpt runs/flow_text --nfe 10 --n 300"),
    ("RESULTS_flow_vs_vp.md", "Flow matching vs the demo's VP-v recipe at the same steps (issue 23)",
     ".venv/bin/python bench/flow_vs_vp.py --only text && .venv/bin/python bench/trained_defaults.py nfe "
     "--ckpt runs/demo --ckpt runs/flow_text --samplers unipc --nfe 4,8,16,32 --n 300"),
    ("RESULTS_demo.md", "The make demo run (not part of make bench)",
     "make demo && python bench/report.py --demo runs/demo"),
]


def take_demo(run_dir: str, bench_dir: str = HERE) -> str:
    """RESULTS_demo.md from a demo run: its report.md under the date and git commit of the run."""
    import json

    report = open(os.path.join(run_dir, "report.md")).read()
    info = json.load(open(os.path.join(run_dir, "run.json")))
    date = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(run_dir, "report.md"))).astimezone()
    first, _, rest = report.partition("\n")
    cpu = info.get("cpu")
    if cpu is None:  # runs before run.json recorded the CPU: this machine's, which ran the report
        from diffusionlab.core.devices import cpu_info

        cpu = {**cpu_info(), "model": cpu_info()["model"] + " (the machine of this report; the run did not record it)"}
    text = "\n".join([first, "", f"- date: {date.isoformat(timespec='seconds')}",
                      f"- command: `make demo` (run directory {run_dir}, git {info.get('git_commit')})",
                      f"- CPU: {cpu['model']}, {cpu['kind']} (flags {' '.join(cpu['flags'])})",
                      rest.lstrip("\n")])
    path = os.path.join(bench_dir, "RESULTS_demo.md")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def demote(text: str) -> str:
    """Headings one level down (the stage's title becomes a section of RESULTS.md)."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def build(bench_dir: str = HERE) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    out = ["# Benchmark results", "",
           f"Generated {now} by `python bench/report.py` (the last step of `make bench`) at git {common.git_rev(HERE)}, on "
           f"{common.cpu_model()} ({os.cpu_count()} logical CPUs), no GPU. Do not edit: every section below is "
           "a stage's own report, with the date and command that made it; rerun the stage's command to renew "
           "it. Interpretation of these runs: [NOTES.md](NOTES.md). Timing is never asserted in tests.", "",
           "| section | regenerate with | made |", "|---|---|---|"]
    body = []
    for name, title, cmd in STAGES:
        path = os.path.join(bench_dir, name)
        if not os.path.exists(path):
            out.append(f"| {title} | `{cmd}` | not run yet |")
            continue
        text = open(path).read()
        date = re.search(r"date: (\S+)", text)
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        out.append(f"| [{title}](#{anchor}) | `{cmd}` | {date.group(1)[:16] if date else 'see section'} |")
        first, _, rest = text.partition("\n")
        body += ["", f"## {title}", "", f"Source: [{name}]({name}).", "", demote(rest.strip()), ""]
    return "\n".join(out + body) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--demo", default=None, metavar="RUN", help="first copy RUN/report.md to RESULTS_demo.md")
    a = ap.parse_args(argv)
    if a.demo:
        print(f"wrote {take_demo(a.demo, os.path.dirname(os.path.abspath(a.out)))}")
    text = build(os.path.dirname(os.path.abspath(a.out)))
    with open(a.out + ".tmp", "w") as f:
        f.write(text)
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
