"""Sampler accuracy vs NFE: every diffusionlab sampler x sigma grid against diffusers' schedulers,
on analytic Gaussian-mixture denoisers (bench/mixtures.py), in one run.

Both libraries integrate the same exact model over the same sigma range: the discrete 1000-step
linear VP schedule (betas 1e-4..0.02, sigma about 0.01 to 157). Ours gets it as
``DiscreteDenoiser(AnalyticEpsNet)``; diffusers gets the eps-prediction
eps(x_vp, sigma) = (x_vp sqrt(1 + sigma^2) - D(x_vp sqrt(1 + sigma^2), sigma)) / sigma, evaluated at
the sigma the scheduler itself believes it is at (``scheduler.sigmas[i]`` for the sigma-based and
multistep schedulers, ``alphas_cumprod[t]`` for DDIM/DDPM). A trained network would see the
timestep diffusers passes (rounded for DPM/UniPC Karras grids); the analytic model is given the
exact sigma instead, which can only help diffusers.

NFE = actual model calls. For each NFE target, every configuration runs with the largest
``steps`` whose counted NFE is <= the target (found by dry runs on 2 samples). Score: sliced
Wasserstein-2 to a true sample set of the same size (256 fixed random projections), beside its
floor (independent true sets of that size), and the signed cross-entropy gap
mean(-log p_data(generated)) - mean(-log p_data(true)). Each library is credited with its best
configuration (lowest sliced W2) at each NFE.

    python bench/samplers.py [--n 20000] [--nfe 5,10,20,50] [--quick] [--mixtures ring8,scales,aniso64]
                             [--only ours,diffusers] [--configs REGEX] [--replot] [--merge]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

import common
import mixtures as mx
from samplers_report import plot, report

LIBRARIES = ("ours", "diffusers")
T_TRAIN, BETA_START, BETA_END = 1000, 1e-4, 0.02
MAX_STEPS = T_TRAIN
SEEDS = dict(reference=1, noise=3, sampler=4)
FLOOR_SEEDS = (100, 101, 102, 103, 104)  # independent true sets for the true-vs-true floor
DEFAULTS = dict(out="bench/RESULTS_samplers.md", plot="bench/samplers_error_vs_nfe.png",
                cache="bench/cache/samplers.json")
QUICK = dict(n=2000, out="bench/cache/samplers_quick.md", plot="bench/cache/samplers_quick.png",
             cache="bench/cache/samplers_quick.json")
# knobs tried besides a sampler's defaults, when its function takes them (diffusers gets
# solver orders 2 and 3 too)
KNOB_VARIANTS = {"order": (2, 3)}


@dataclass
class Config:
    """One way to sample: run(steps, z, generator) -> (x0, counted NFE)."""
    library: str
    label: str
    nfe_per_step: int                      # first guess for the step search only
    run: Callable


# ---------------------------------------------------------------------------------- ours
def discrete_model(mixture):
    """The mixture's exact denoiser as a discrete eps-prediction model on the linear T=1000
    schedule, wrapped exactly as a trained checkpoint would be."""
    from diffusionlab.core.denoiser import DiscreteDenoiser
    from diffusionlab.core.schedules import DiscreteSchedule
    sched = DiscreteSchedule.from_name("linear", T_TRAIN, beta_start=BETA_START, beta_end=BETA_END)
    return DiscreteDenoiser(mx.AnalyticEpsNet(mixture, sched.sigmas), sched, "eps")


def not_applicable(info) -> str | None:
    """Why a registered sampler cannot run at a fixed NFE budget (None if it can). Looks at the
    SamplerInfo flags a sampler may declare; anything else is caught by the dry runs."""
    for attr, bad in (("applicable", False), ("fixed_nfe", False), ("adaptive", True)):
        if hasattr(info, attr) and getattr(info, attr) == bad:
            return f"SamplerInfo.{attr} = {bad}"
    nps = getattr(info, "nfe_per_step", 1)
    if not isinstance(nps, int) or nps < 1:
        return f"SamplerInfo.nfe_per_step = {nps!r} (NFE cannot be fixed)"
    return None


def knob_variants(fn) -> list[dict]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return [{}]
    out = [{}]
    for knob, values in KNOB_VARIANTS.items():
        if knob in params:
            default = params[knob].default
            out += [{knob: v} for v in values if v != default]
    return out


def our_configs(mixture) -> tuple[list[Config], list[tuple[str, str]]]:
    """Every registered sampler x every sigma grid (x knob variants); plus (name, reason) skips."""
    import diffusionlab as dl
    from diffusionlab.core.schedules import SIGMA_SCHEDULES
    den = discrete_model(mixture)
    configs, skipped = [], []
    for name, info in dl.SAMPLERS.items():
        why = not_applicable(info)
        if why:
            skipped.append((name, why))
            continue
        for grid in SIGMA_SCHEDULES:
            for knobs in knob_variants(info.fn):
                label = " ".join([name, grid] + [f"{k}={v}" for k, v in knobs.items()])

                def run(steps, z, gen, name=name, grid=grid, knobs=knobs):
                    x, info_ = dl.sample(den, tuple(z.shape), sampler=name, steps=steps, schedule=grid,
                                         noise=z, generator=gen, return_info=True, **knobs)
                    return x, int(info_["nfe"])
                configs.append(Config("ours", label, info.nfe_per_step, run))
    return configs, skipped


# ---------------------------------------------------------------------------------- diffusers
SPACINGS = ("leading", "linspace", "trailing")


def diffusers_specs() -> list[tuple[str, str, int, dict]]:
    """(label, scheduler class name, model calls per step, config) for every diffusers config."""
    specs = []
    for sp in SPACINGS:
        specs += [(f"DDIM {sp}", "DDIMScheduler", 1, dict(timestep_spacing=sp)),
                  (f"DDPM {sp}", "DDPMScheduler", 1, dict(timestep_spacing=sp))]
        for order in (2, 3):
            specs.append((f"DPM++{order}M {sp}", "DPMSolverMultistepScheduler", 1,
                          dict(algorithm_type="dpmsolver++", solver_order=order, timestep_spacing=sp)))
        for order in (2, 3):
            specs.append((f"UniPC-{order} {sp}", "UniPCMultistepScheduler", 1,
                          dict(solver_order=order, timestep_spacing=sp)))
        for order in (2, 3):  # not in the list; added because ours has DEIS too
            specs.append((f"DEIS-{order} {sp}", "DEISMultistepScheduler", 1, dict(solver_order=order, timestep_spacing=sp)))
        specs += [(f"Euler {sp}", "EulerDiscreteScheduler", 1, dict(timestep_spacing=sp)),
                  (f"EulerA {sp}", "EulerAncestralDiscreteScheduler", 1, dict(timestep_spacing=sp)),
                  (f"Heun {sp}", "HeunDiscreteScheduler", 2, dict(timestep_spacing=sp))]
    # Karras / exponential sigmas span the whole table whatever the spacing for DPM/UniPC;
    # Euler/Heun take the range from the spaced timesteps, so "linspace" gives them the whole
    # table too (the same sigma_min / sigma_max as ours)
    for grid in ("karras", "exponential"):
        flag = {f"use_{grid}_sigmas": True}
        for order in (2, 3):
            specs.append((f"DPM++{order}M {grid}", "DPMSolverMultistepScheduler", 1,
                          dict(algorithm_type="dpmsolver++", solver_order=order, **flag)))
            specs.append((f"UniPC-{order} {grid}", "UniPCMultistepScheduler", 1, dict(solver_order=order, **flag)))
            specs.append((f"DEIS-{order} {grid}", "DEISMultistepScheduler", 1, dict(solver_order=order, **flag)))
        specs += [(f"Euler {grid}", "EulerDiscreteScheduler", 1, dict(timestep_spacing="linspace", **flag)),
                  (f"Heun {grid}", "HeunDiscreteScheduler", 2, dict(timestep_spacing="linspace", **flag))]
    return specs


def make_scheduler(cls_name: str, kwargs: dict):
    """The scheduler on our beta schedule; x0 clipping and thresholding off, final sigma 0."""
    import diffusers
    cls = getattr(diffusers, cls_name)
    accepted = inspect.signature(cls.__init__).parameters
    base = dict(num_train_timesteps=T_TRAIN, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear",
                prediction_type="epsilon", clip_sample=False, thresholding=False, final_sigmas_type="zero",
                steps_offset=0)
    return cls(**{k: v for k, v in base.items() if k in accepted}, **kwargs)


def believed_sigma(scheduler, i: int, t) -> float:
    """The noise level the scheduler's own update assumes at its i-th model call (KDPM2's second
    call of a step sits at the interpolated sigma, ``sigmas_interpol``)."""
    if hasattr(scheduler, "sigmas_interpol") and not scheduler.state_in_first_order:
        return float(scheduler.sigmas_interpol[scheduler.step_index])
    if hasattr(scheduler, "sigmas"):
        if scheduler.step_index is not None and scheduler.step_index != i:
            raise RuntimeError(f"step_index {scheduler.step_index} != loop index {i}")
        return float(scheduler.sigmas[i])
    abar = float(scheduler.alphas_cumprod[int(t)])
    return math.sqrt((1 - abar) / abar)


def run_diffusers(mixture, cls_name: str, kwargs: dict, steps: int, z: torch.Tensor, gen, scheduler=None) -> tuple:
    """diffusers' own sampling loop (as its pipelines write it) around the analytic eps model;
    ``scheduler``: a ready one instead of ``make_scheduler(cls_name, kwargs)``."""
    scheduler = scheduler if scheduler is not None else make_scheduler(cls_name, kwargs)
    scheduler.set_timesteps(steps)
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    x = z * float(scheduler.init_noise_sigma)
    nfe = 0
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        eps = mx.eps_from_denoiser(mixture, x_in, believed_sigma(scheduler, i, t))
        nfe += 1
        x = scheduler.step(eps, t, x, **({"generator": gen} if takes_gen else {})).prev_sample
    return x, nfe


def diffusers_configs(mixture) -> list[Config]:
    out = []
    for label, cls_name, per_step, kwargs in diffusers_specs():
        def run(steps, z, gen, cls_name=cls_name, kwargs=kwargs):
            return run_diffusers(mixture, cls_name, kwargs, steps, z, gen)
        out.append(Config("diffusers", label, per_step, run))
    return out


# ---------------------------------------------------------------------------------- measuring
def fit_steps(cfg: Config, target: int, z_small: torch.Tensor, cache: dict) -> tuple[int | None, str]:
    """The largest steps whose counted NFE is <= target, from dry runs on a tiny batch."""
    def nfe(s):
        if s not in cache:
            cache[s] = cfg.run(s, z_small, torch.Generator().manual_seed(0))[1]
        return cache[s]

    s = max(1, min(MAX_STEPS, target // max(1, cfg.nfe_per_step)))
    while s > 1 and nfe(s) > target:
        s -= 1
    if nfe(s) > target:
        return None, f"1 step already takes {nfe(1)} calls"
    while s < MAX_STEPS:
        if nfe(s + 1) <= nfe(s):
            return None, f"NFE does not grow with steps ({nfe(s)} at {s}, {nfe(s + 1)} at {s + 1})"
        if nfe(s + 1) > target:
            break
        s += 1
    return s, ""


def measure_mixture(mixture, configs: list[Config], targets: list[int], n: int) -> tuple[dict, list[dict]]:
    gen = lambda key: torch.Generator().manual_seed(SEEDS[key])  # noqa: E731
    ref = mixture.sample(n, gen("reference"))
    z = torch.randn(n, mixture.dim, generator=gen("noise"), dtype=mx.F64)
    proj = mx.projections(mixture.dim)
    ref_sorted = mx.sorted_projections(ref, proj)
    ce_ref = mx.cross_entropy(mixture, ref)
    others = [mixture.sample(n, torch.Generator().manual_seed(s)) for s in FLOOR_SEEDS]
    sw2s = [mx.sliced_w2(o, ref_sorted, proj) for o in others]
    gaps = [mx.cross_entropy(mixture, o) - ce_ref for o in others]
    floor = dict(sw2=sum(sw2s) / len(sw2s), sw2_min=min(sw2s), sw2_max=max(sw2s),
                 ce_gap=sum(gaps) / len(gaps), ce_gap_min=min(gaps), ce_gap_max=max(gaps), ce_true=ce_ref)
    log(f"[{mixture.name}] floor: sliced W2 {floor['sw2']:.4g} ({floor['sw2_min']:.4g}-{floor['sw2_max']:.4g}), "
        f"CE gap {floor['ce_gap']:+.4g}")
    rows = []
    for cfg in configs:
        cache, line = {}, []
        for target in targets:
            row = dict(mixture=mixture.name, library=cfg.library, config=cfg.label, target=target)
            try:
                steps, why = fit_steps(cfg, target, z[:2], cache)
                if steps is None:
                    row["skipped"] = why
                else:
                    t0 = time.perf_counter()
                    x, nfe = cfg.run(steps, z, gen("sampler"))
                    row.update(steps=steps, nfe=nfe, seconds=round(time.perf_counter() - t0, 3),
                               sw2=mx.sliced_w2(x, ref_sorted, proj),
                               ce_gap=mx.cross_entropy(mixture, x) - ce_ref)
            except Exception as e:  # a broken config is reported, the run goes on
                row["error"] = f"{type(e).__name__}: {e}"[:240]
            rows.append(row)
            line.append(f"{row['sw2']:.3g}@{row['nfe']}" if "sw2" in row else
                        ("skip" if "skipped" in row else "ERR"))
        log(f"[{mixture.name}] {cfg.library:9s} {cfg.label:32s} " + "  ".join(line))
    return floor, rows


# ---------------------------------------------------------------------------------- CLI
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="samples per run (default 20000; --quick: 2000)")
    ap.add_argument("--nfe", default="5,10,20,50", help="comma list of NFE targets")
    ap.add_argument("--quick", action="store_true", help="n=2000 and outputs under bench/cache/: a smoke test")
    ap.add_argument("--mixtures", default=",".join(mx.MIXTURES), help="comma list of: " + ",".join(mx.MIXTURES))
    ap.add_argument("--only", default=",".join(LIBRARIES), help="comma list of: " + ",".join(LIBRARIES))
    ap.add_argument("--configs", default=None, help="regex on 'library:config' to run a subset")
    ap.add_argument("--replot", action="store_true", help="rewrite markdown and plot from the JSON cache")
    ap.add_argument("--merge", action="store_true", help="run only the selected configs (--configs, --only) "
                    "and replace or add their rows in the JSON cache (same n, NFE targets and seeds)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    for key in DEFAULTS:
        ap.add_argument(f"--{key}", default=None, help=f"default {DEFAULTS[key]} ({QUICK[key]} with --quick)")
    args = ap.parse_args(argv)
    for key in DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, (QUICK if args.quick else DEFAULTS)[key])
    args.n = args.n or (QUICK["n"] if args.quick else 20000)
    args.targets = [int(v) for v in args.nfe.split(",") if v.strip()]
    args.mixture_names = [m.strip() for m in args.mixtures.split(",") if m.strip()]
    args.libraries = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = (set(args.mixture_names) - set(mx.MIXTURES)) | (set(args.libraries) - set(LIBRARIES))
    if bad:
        ap.error(f"unknown {sorted(bad)}")
    return args


def run_all(args) -> dict:
    import diffusionlab
    t0, git = time.perf_counter(), common.git_rev()  # the tree the samplers were imported from
    have_diffusers = importlib.util.find_spec("diffusers") is not None
    if "diffusers" in args.libraries and not have_diffusers:
        log("diffusers is not installed: ours only (use .venv-bench, see bench/README.md)")
    pattern = re.compile(args.configs) if args.configs else None
    data = dict(mixtures={}, floors={}, rows=[], skipped=[])
    for name in args.mixture_names:
        mixture = mx.MIXTURES[name]()
        configs = []
        if "ours" in args.libraries:
            ours, data["skipped"] = our_configs(mixture)
            configs += ours
        if "diffusers" in args.libraries and have_diffusers:
            configs += diffusers_configs(mixture)
        if pattern:
            configs = [c for c in configs if pattern.search(f"{c.library}:{c.label}")]
        data["mixtures"][name] = mixture.description
        data["floors"][name], rows = measure_mixture(mixture, configs, args.targets, args.n)
        data["rows"] += rows
    versions = dict(torch=torch.__version__, diffusionlab=diffusionlab.__version__,
                    diffusers=__import__("diffusers").__version__ if have_diffusers else "not installed")
    data["meta"] = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        command=shlex.join([os.path.relpath(sys.executable), *sys.argv]), quick=args.quick,
                        n=args.n, targets=args.targets, floor_sets=len(FLOOR_SEEDS), threads=args.threads,
                        cpu=common.cpu_model(),
                        git=git, wall_s=time.perf_counter() - t0, **versions)
    return data


def merge(old: dict, new: dict) -> dict:
    """``old`` with the rows of ``new`` in place of the same (mixture, library, config). Every
    run is deterministic given the seeds, so this equals one run over both sets of configs."""
    for key in ("n", "targets"):
        if old["meta"][key] != new["meta"][key]:
            raise SystemExit(f"--merge: {key} {new['meta'][key]} differs from the cache's {old['meta'][key]}")
    replaced = {(r["mixture"], r["library"], r["config"]) for r in new["rows"]}
    old["rows"] = [r for r in old["rows"] if (r["mixture"], r["library"], r["config"]) not in replaced] + new["rows"]
    for mix, desc in new["mixtures"].items():
        old["mixtures"].setdefault(mix, desc)
        old["floors"].setdefault(mix, new["floors"][mix])
    meta = old["meta"]
    meta["merged"] = meta.get("merged", []) + [dict(date=new["meta"]["date"], command=new["meta"]["command"],
                                                      git=new["meta"]["git"], configs=len(replaced))]
    meta["wall_s"] += new["meta"]["wall_s"]
    return old


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot:
        with open(args.cache) as f:
            data = json.load(f)
    elif args.merge:
        with open(args.cache) as f:
            old = json.load(f)
        torch.set_num_threads(args.threads)
        data = merge(old, run_all(args))
        with open(args.cache, "w") as f:
            json.dump(data, f, indent=1)
        log(f"merged into {args.cache}")
    else:
        torch.set_num_threads(args.threads)
        data = run_all(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
        with open(args.cache, "w") as f:
            json.dump(data, f, indent=1)
        log(f"wrote {args.cache}")
    write_outputs(report(data), data, args.out, args.plot, plot)


def write_outputs(text: str, data: dict, out: str, plot_path: str, plot_fn) -> None:
    """The markdown report to ``out`` and ``plot_fn(data, plot_path)``, folders made; the text echoed."""
    for path in (out, plot_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    plot_fn(data, plot_path)
    print(text)
    log(f"wrote {out} and {plot_path}")


if __name__ == "__main__":
    main()
