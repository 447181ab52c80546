"""Ours at defaults vs diffusers' schedulers at defaults (and with their common options), on
HELD-OUT analytic Gaussian mixtures: the three of bench/mixtures.py (ring8, scales, aniso64)
plus 'tri3' (3 Gaussians in 8-D, defined here). diffusionlab's default grids are chosen on random
mixtures with seeds 2000-2015 (bench/defaults_search.py), never on these.

Model: the exact denoiser of each mixture as a discrete eps model on the 1000-step linear VP
schedule (betas 1e-4..0.02), as in bench/samplers.py, whose functions this script reuses
(``discrete_model``, ``believed_sigma``, ``fit_steps``, the seeds); diffusers gets the exact eps at
the sigma its scheduler believes it is at.

"Ours at defaults": every registered deterministic fixed-NFE sampler, called as
``dl.sample(den, shape, sampler=name, steps=steps, noise=z)`` (no schedule: the library's 'auto'
grid; no knobs), steps = the largest with ``SamplerInfo.count_nfe(steps) <= budget``; and
``dl.sample(den, shape, steps=steps, noise=z)`` (the model kind's default sampler).
"diffusers at defaults": each scheduler with its own defaults plus only what describes the model
(num_train_timesteps, betas, linear schedule, epsilon, clip_sample / thresholding off).
"diffusers options": defaults plus, one at a time, use_karras_sigmas=True,
timestep_spacing='trailing', solver_order=3, algorithm_type='sde-dpmsolver++',
final_sigmas_type='zero' (where the scheduler accepts it and it is not already its default), and
the SDE schedulers EulerAncestral and DDPM. diffusers' steps: the largest num_inference_steps
whose counted model calls are <= the budget.

Metrics: (a) solver error: sliced W2 (256 projections) to the exact probability-flow ODE
solution for the same unit noise z (RK45 to 1e-7, from the table's sigma_max to 1e-4, then the
denoiser): floor-free for deterministic samplers; SDE samplers are independent draws, so under
(a) they carry the sampling floor (given beside them). (b) sliced W2 to an independent true
sample set of the same size, minus its floor (mean over 5 further true sets).

    .venv-bench/bin/python bench/defaults_vs_diffusers.py [--n 20000] [--nfe 5,10,20]
        [--mixtures ring8,scales,aniso64,tri3] [--threads 1] [--replot] [--out ...] [--plot ...] [--cache ...]
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import mixtures as mx  # noqa: E402
import samplers as sb  # noqa: E402
from defaults_report import plot, report  # noqa: E402

DEFAULTS = dict(out="bench/RESULTS_defaults_vs_diffusers.md", plot="bench/defaults_vs_diffusers.png",
                cache="bench/cache/defaults_vs_diffusers.json")
HELD_OUT = ("ring8", "scales", "aniso64", "tri3")

# ours -> (diffusers label, scheduler, config beyond its defaults): the counterpart at defaults
PAIRS = {
    "ddim": ("DDIM", "DDIMScheduler", {}),
    "euler": ("Euler", "EulerDiscreteScheduler", {}),
    "heun": ("Heun", "HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2", "KDPM2DiscreteScheduler", {}),
    "lms": ("LMS", "LMSDiscreteScheduler", {}),
    "pndm": ("PNDM", "PNDMScheduler", {}),
    "deis": ("DEIS", "DEISMultistepScheduler", {}),
    "dpm_solver": ("DPMSinglestep", "DPMSolverSinglestepScheduler", {}),
    "dpm_solver_fast": ("DPMSinglestep", "DPMSolverSinglestepScheduler", {}),
    "dpmpp_2m": ("DPM++2M", "DPMSolverMultistepScheduler", {}),
    "dpmpp_3m": ("DPM++3M", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    "unipc": ("UniPC", "UniPCMultistepScheduler", {}),
}
SDE_DEFAULTS = [("EulerA", "EulerAncestralDiscreteScheduler", {}), ("DDPM", "DDPMScheduler", {})]
OPTIONS = [("karras", {"use_karras_sigmas": True}), ("trailing", {"timestep_spacing": "trailing"}),
           ("order3", {"solver_order": 3}), ("sde", {"algorithm_type": "sde-dpmsolver++"}),
           ("final0", {"final_sigmas_type": "zero"})]
ONLY_FOR = {"sde": {"DPMSolverMultistepScheduler"}}  # DEIS / singlestep accept the key, not this value


def tri3() -> mx.DiagGaussianMixture:
    """3 Gaussians in 8-D: means uniform in [-0.6, 0.6] (seed 7), per-dimension stds log-uniform
    in [0.01, 0.2], weights 0.5 / 0.3 / 0.2."""
    g = torch.Generator().manual_seed(7)
    k, d = 3, 8
    means = torch.rand(k, d, generator=g, dtype=mx.F64) * 1.2 - 0.6
    log_std = torch.empty(k, d, dtype=mx.F64).uniform_(math.log(0.01), math.log(0.2), generator=g)
    return mx.DiagGaussianMixture("tri3", means, (2 * log_std).exp(), [0.5, 0.3, 0.2],
                                  "8-D, 3 Gaussians with diagonal covariances (per-dim std 0.01-0.2), "
                                  "weights 0.5/0.3/0.2")


MIXTURES = {**mx.MIXTURES, "tri3": tri3}


# ---------------------------------------------------------------------------------- diffusers
def _accepted(cls_name: str) -> dict:
    import diffusers
    return inspect.signature(getattr(diffusers, cls_name).__init__).parameters


def make_default_scheduler(cls_name: str, kwargs: dict):
    """The scheduler with its own defaults plus only what describes the model (no spacing, no
    final_sigmas_type: those stay the scheduler's)."""
    import diffusers
    accepted = _accepted(cls_name)
    base = dict(num_train_timesteps=sb.T_TRAIN, beta_start=sb.BETA_START, beta_end=sb.BETA_END,
                beta_schedule="linear", prediction_type="epsilon", clip_sample=False, thresholding=False)
    return getattr(diffusers, cls_name)(**{k: v for k, v in base.items() if k in accepted}, **kwargs)


def run_diffusers(mixture, cls_name: str, kwargs: dict, steps: int, z: torch.Tensor, gen) -> tuple:
    """samplers.run_diffusers (diffusers' own loop) with the scheduler at its own defaults; (x0, calls)."""
    x, nfe = sb.run_diffusers(mixture, cls_name, kwargs, steps, z, gen,
                              scheduler=make_default_scheduler(cls_name, kwargs))
    return x.to(mx.F64), nfe


def diffusers_specs() -> tuple[list[dict], list[str]]:
    """Every diffusers config: the deterministic schedulers at defaults ('default'), the SDE ones
    at defaults and every one-option variant ('option'); plus notes on options dropped because
    they equal a default."""
    bases, seen = [], set()
    for label, cls_name, kw in PAIRS.values():
        if (cls_name, json.dumps(kw, sort_keys=True)) not in seen:
            seen.add((cls_name, json.dumps(kw, sort_keys=True)))
            bases.append((label, cls_name, kw))
    specs = [dict(label=label, cls=cls_name, kwargs=kw, kind="default", sde=False) for label, cls_name, kw in bases]
    specs += [dict(label=label, cls=cls_name, kwargs=kw, kind="option", sde=True) for label, cls_name, kw in SDE_DEFAULTS]
    notes, keys = [], {(s["cls"], json.dumps(s["kwargs"], sort_keys=True)) for s in specs}
    for label, cls_name, kw in bases + SDE_DEFAULTS:
        accepted = _accepted(cls_name)
        for opt, extra in OPTIONS:
            (key, value), = extra.items()
            if key not in accepted or cls_name not in ONLY_FOR.get(opt, {cls_name}):
                continue
            effective = kw.get(key, accepted[key].default)
            if effective == value:
                notes.append(f"{label} +{opt}: already its default ({key}={value!r})")
                continue
            merged = {**kw, **extra}
            ident = (cls_name, json.dumps(merged, sort_keys=True))
            if ident in keys:
                notes.append(f"{label} +{opt}: the same config as another row")
                continue
            keys.add(ident)
            sde = cls_name in {c for _, c, _ in SDE_DEFAULTS} or merged.get("algorithm_type", "").startswith("sde")
            specs.append(dict(label=f"{label} +{opt}", cls=cls_name, kwargs=merged, kind="option", sde=sde))
    return specs, notes


# ---------------------------------------------------------------------------------- ours
def our_samplers() -> list[str]:
    import diffusionlab as dl
    return [name for name, info in dl.SAMPLERS.items() if not info.stochastic and info.fixed_nfe]


def our_steps(name: str, budget: int) -> int | None:
    """The largest steps with SamplerInfo.count_nfe(steps) <= budget (None if 1 step is over)."""
    import diffusionlab as dl
    info, best = dl.SAMPLERS[name], None
    for s in range(1, budget + 2):
        if info.count_nfe(s) <= budget:
            best = s
    return best


# ---------------------------------------------------------------------------------- measuring
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_mixture(mixture, targets: list[int], n: int, specs: list[dict]) -> tuple[dict, list[dict]]:
    import diffusionlab as dl
    from diffusionlab.core.sampling import sampling_defaults
    gen = lambda key: torch.Generator().manual_seed(sb.SEEDS[key])  # noqa: E731
    den = sb.discrete_model(mixture)
    z = torch.randn(n, mixture.dim, generator=gen("noise"), dtype=mx.F64)
    proj = mx.projections(mixture.dim)
    t0 = time.perf_counter()
    exact = dl.sample(den, z.shape, "ode", sigmas=[den.sigma_max, 1e-4, 0.0], noise=z, rtol=1e-7, atol=1e-7)
    exact_s = time.perf_counter() - t0
    exact_sorted = mx.sorted_projections(exact, proj)
    ref = mixture.sample(n, gen("reference"))
    ref_sorted = mx.sorted_projections(ref, proj)
    others = [mixture.sample(n, torch.Generator().manual_seed(s)) for s in sb.FLOOR_SEEDS]
    floor_b = [mx.sliced_w2(o, ref_sorted, proj) for o in others]
    floor_a = [mx.sliced_w2(o, exact_sorted, proj) for o in others]
    floor = dict(b=sum(floor_b) / len(floor_b), b_min=min(floor_b), b_max=max(floor_b),
                 a=sum(floor_a) / len(floor_a), a_min=min(floor_a), a_max=max(floor_a),
                 exact_vs_true=mx.sliced_w2(exact, ref_sorted, proj), exact_s=round(exact_s, 2))
    log(f"[{mixture.name}] exact ODE {exact_s:.1f} s; floors: (a) {floor['a']:.4g}, (b) {floor['b']:.4g}; "
        f"exact vs true {floor['exact_vs_true']:.4g}")

    def score(row, x, nfe, seconds):
        row.update(nfe=nfe, seconds=round(seconds, 3), err=mx.sliced_w2(x, exact_sorted, proj),
                   sw2=mx.sliced_w2(x, ref_sorted, proj))
        row["excess"] = row["sw2"] - floor["b"]

    rows = []
    default_sampler = sampling_defaults(den).sampler
    ours = [(name, name, "ours") for name in our_samplers()] + [(f"default ({default_sampler})", None, "ours_default")]
    for label, name, lib in ours:
        line = []
        for target in targets:
            row = dict(mixture=mixture.name, library=lib, config=label, target=target, sde=False,
                       sampler=name or default_sampler)
            try:
                steps = our_steps(name or default_sampler, target)
                if steps is None:
                    row["skipped"] = "1 step is over the budget"
                else:
                    t0 = time.perf_counter()
                    kw = {} if name is None else dict(sampler=name)
                    x, info = dl.sample(den, z.shape, steps=steps, noise=z, generator=gen("sampler"),
                                        return_info=True, **kw)
                    row["steps"] = steps
                    score(row, x, int(info["nfe"]), time.perf_counter() - t0)
            except Exception as e:  # reported, the run goes on
                row["error"] = f"{type(e).__name__}: {e}"[:240]
            rows.append(row)
            line.append(f"{row['err']:.3g}@{row['nfe']}" if "err" in row else ("skip" if "skipped" in row else "ERR"))
        log(f"[{mixture.name}] ours      {label:28s} " + "  ".join(line))
    for spec in specs:
        failures: dict = {}

        def run(steps, zz, g, spec=spec, failures=failures):
            if len(zz) > 2:
                return run_diffusers(mixture, spec["cls"], spec["kwargs"], steps, zz, g)
            try:  # a dry run of fit_steps: a step count diffusers cannot run counts as too many calls
                return run_diffusers(mixture, spec["cls"], spec["kwargs"], steps, zz, g)
            except Exception as e:  # noqa: BLE001
                failures[steps] = f"{type(e).__name__}: {e}"[:120]
                return None, math.inf

        two = spec["cls"] in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler")
        cfg = sb.Config("diffusers", spec["label"], 2 if two else 1, run)
        cache, line = {}, []
        for target in targets:
            row = dict(mixture=mixture.name, library="diffusers", config=spec["label"], cls=spec["cls"],
                       kwargs=spec["kwargs"], kind=spec["kind"], sde=spec["sde"], target=target)
            try:
                steps, why = sb.fit_steps(cfg, target, z[:2], cache)
                if steps is None:
                    fits = sorted((c, s) for s, c in cache.items() if math.isfinite(c))
                    row["skipped"] = (f"no step count fits {target} calls: the fewest are {fits[0][0]} at "
                                      f"{fits[0][1]} steps" if fits else why)
                    if failures:
                        row["skipped"] += f"; fewer steps fail: {failures[min(failures)]} (steps {sorted(failures)})"
                else:
                    t0 = time.perf_counter()
                    x, nfe = cfg.run(steps, z, gen("sampler"))
                    row["steps"] = steps
                    score(row, x, nfe, time.perf_counter() - t0)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:240]
            rows.append(row)
            line.append(f"{row['err']:.3g}@{row['nfe']}" if "err" in row else ("skip" if "skipped" in row else "ERR"))
        log(f"[{mixture.name}] diffusers {spec['label']:28s} " + "  ".join(line))
    return floor, rows


def cpu_kind() -> str:
    """The CPU model and kind (AVX2 / AVX-512 / AMX), as run.json records it."""
    from diffusionlab.core.devices import cpu_info
    c = cpu_info()
    return f"{c['model']} ({c['kind']}, fast bf16: {c['fast_bf16']})"


def run_all(args) -> dict:
    import diffusers
    diffusers.utils.logging.set_verbosity_error()  # its lower_order_final notices, once per dry run

    import diffusionlab
    from diffusionlab.core.sampling import DEFAULT_GRIDS
    t0, git = time.perf_counter(), common.git_rev()
    specs, notes = diffusers_specs()
    data = dict(mixtures={}, floors={}, rows=[], notes=notes, pairs={k: v[0] for k, v in PAIRS.items()},
                specs=[dict(label=s["label"], cls=s["cls"], kwargs=s["kwargs"], kind=s["kind"], sde=s["sde"])
                       for s in specs])
    for name in args.mixture_names:
        mixture = MIXTURES[name]()
        data["mixtures"][name] = mixture.description
        data["floors"][name], rows = measure_mixture(mixture, args.targets, args.n, specs)
        data["rows"] += rows
    data["meta"] = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        command=shlex.join([os.path.relpath(sys.executable), *sys.argv]), n=args.n,
                        targets=args.targets, floor_sets=len(sb.FLOOR_SEEDS), threads=args.threads,
                        cpu_kind=cpu_kind(), git=git, wall_s=round(time.perf_counter() - t0, 1),
                        torch=torch.__version__, diffusers=diffusers.__version__,
                        diffusionlab=diffusionlab.__version__,
                        default_grids={k: v for k, v in DEFAULT_GRIDS.items() if v})
    return data


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="samples per run")
    ap.add_argument("--nfe", default="5,10,20", help="comma list of NFE budgets")
    ap.add_argument("--mixtures", default=",".join(HELD_OUT), help="comma list of: " + ",".join(MIXTURES))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--replot", action="store_true", help="rewrite markdown and plot from the JSON cache")
    for key, value in DEFAULTS.items():
        ap.add_argument(f"--{key}", default=value, help=f"default {value}")
    args = ap.parse_args(argv)
    args.targets = [int(v) for v in args.nfe.split(",") if v.strip()]
    args.mixture_names = [m.strip() for m in args.mixtures.split(",") if m.strip()]
    bad = set(args.mixture_names) - set(MIXTURES)
    if bad:
        ap.error(f"unknown mixtures {sorted(bad)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot:
        with open(args.cache) as f:
            data = json.load(f)
    else:
        torch.set_num_threads(args.threads)
        data = run_all(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
        with open(args.cache, "w") as f:
            json.dump(data, f, indent=1)
        log(f"wrote {args.cache}")
    sb.write_outputs(report(data, plot_path=args.plot, out_path=args.out), data, args.out, args.plot, plot)


if __name__ == "__main__":
    main()
