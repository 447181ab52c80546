"""Tune the 'tuned' sigma grid (diffusionlab.core.schedules.TUNED_GRIDS) on a family of RANDOM
Gaussian mixtures, never on the benchmark's own mixtures (bench/samplers.py).

Family: 2-D and 16-D mixtures of 2-10 diagonal Gaussians with means uniform in [-0.8, 0.8],
per-dimension stds log-uniform in [0.005, 0.3] and Dirichlet(1) weights; seeds 1000 + i (the
benchmark uses fixed hand-made mixtures and seed 0). Model: the exact denoiser as a discrete
eps model on the 1000-step linear VP schedule (sigma 0.01..157), as in the benchmark.

Grid family: a Karras-type ramp sigma_i = (max^(1/rho) + i/(n-1) (last^(1/rho) - max^(1/rho)))^rho
from the model's sigma_max down to a last positive sigma, then 0 (the final denoising call).
Search: rho x last sigma x sampler config; score: mean over the family of log sliced W2 between
the sampler's output and the exact probability-flow ODE solution for the same noise (RK45 to
1e-7): the solver's own error, free of the sampling floor that hides it at 10+ NFE.

    .venv/bin/python bench/tune_grid.py --nfe 5,10 --n 3000 --mixtures 12
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import mixtures as mx  # noqa: E402

import diffusionlab as dl  # noqa: E402
from diffusionlab.core.denoiser import DiscreteDenoiser  # noqa: E402
from diffusionlab.core.schedules import DiscreteSchedule  # noqa: E402

RHOS = (7.0, 10.0, 15.0, math.inf)        # inf: the exponential (log-sigma uniform) limit
LASTS = (0.04, 0.08, 0.12, 0.2)
FIRSTS = (None, 80.0, 40.0)                # None: the model's sigma_max (157 here)
SAMPLERS = [("unipc", {"order": 3, "variant": "bh1"}), ("unipc", {"order": 3, "variant": "bh2"}),
            ("unipc", {"order": 2, "variant": "bh1"}), ("dpmpp_3m", {}), ("deis", {})]


def random_mixture(seed: int) -> mx.DiagGaussianMixture:
    g = np.random.default_rng(seed)
    d = int(g.choice([2, 16]))
    k = int(g.integers(2, 11))
    means = g.uniform(-0.8, 0.8, (k, d))
    stds = np.exp(g.uniform(math.log(0.005), math.log(0.3), (k, d)))
    w = g.dirichlet(np.ones(k))
    return mx.DiagGaussianMixture(f"rand{seed}", means, stds ** 2, w)


def model(mixture):
    sched = DiscreteSchedule.from_name("linear", 1000)
    return DiscreteDenoiser(mx.AnalyticEpsNet(mixture, sched.sigmas), sched, "eps")


def grid(steps: int, rho: float, last: float, sigma_max: float) -> torch.Tensor:
    if math.isinf(rho):
        return dl.get_sigmas("exponential", steps, last, sigma_max)
    return dl.get_sigmas("karras", steps, last, sigma_max, rho=rho)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfe", default="5,10")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--mixtures", type=int, default=12)
    ap.add_argument("--out", default="bench/cache/tune_grid.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    nfes = [int(v) for v in a.nfe.split(",")]
    scores: dict = {}
    t0 = time.perf_counter()
    for i in range(a.mixtures):
        mix = random_mixture(1000 + i)
        den = model(mix)
        smax = den.sigma_max
        z = torch.randn(a.n, mix.dim, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
        # the exact answer for this noise: the probability-flow ODE solved to 1e-7 down to 1e-4
        exact = dl.sample(den, z.shape, "ode", sigmas=[smax, 1e-4, 0.0], noise=z, rtol=1e-7, atol=1e-7)
        proj = mx.projections(mix.dim, seed=5)
        exact_sorted = mx.sorted_projections(exact, proj)
        for nfe, (name, knobs), rho, last, first in itertools.product(nfes, SAMPLERS, RHOS, LASTS, FIRSTS):
            steps = nfe  # one call per step for every sampler searched
            x = dl.sample(den, z.shape, name, sigmas=grid(steps, rho, last, first or smax), noise=z, **knobs)
            sw2 = mx.sliced_w2(x, exact_sorted, proj)
            key = json.dumps([nfe, name, knobs, rho, last, first])
            scores.setdefault(key, []).append(math.log(max(sw2, 1e-12)))
        print(f"mixture {i} ({mix.dim}-D, {len(mix.weights)} comps) done, {time.perf_counter() - t0:.0f} s", flush=True)
    table = sorted(((np.mean(v), k) for k, v in scores.items()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({k: v for k, v in scores.items()}, indent=0))
    for nfe in nfes:
        best = [(s, k) for s, k in table if json.loads(k)[0] == nfe][:8]
        print(f"NFE {nfe}: best mean log sliced W2 to the exact ODE solution")
        for s, k in best:
            print(f"  {s:+.3f}  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
