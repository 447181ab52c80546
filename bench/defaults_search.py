"""Choose the default grid ('auto') per model kind x deterministic sampler, and each kind's default
sampler, by measurement on a family of RANDOM Gaussian mixtures (the choosing set).

Choosing set: 2-D and 16-D mixtures of 2-10 diagonal Gaussians (means uniform in [-0.8, 0.8],
per-dimension stds log-uniform in [0.005, 0.3], Dirichlet(1) weights), seeds 2000 + i: bench/
tune_grid.py's family, but not the seeds 1000-1011 that fitted the 'tuned' grid (held out from
that fit, in family). Held out, never used here: the benchmark's ring8 / scales / aniso64
and tri3 (bench/defaults_vs_diffusers.py), and the trained models (bench/defaults_trained.py).

Each model kind (``diffusionlab.core.sampling.model_kind``) is emulated exactly: the exact mixture
denoiser behind the ``DenoiserInfo`` a real model of that kind declares (sigma range, prior, table,
ladder, shift) - sampling reads nothing else. Score of a run: sliced W2 between its samples and
the exact probability-flow ODE solution for the same noise (RK45, 1e-7, from sigma 1000): the
solver's own error, free of the sampling floor. A (kind, sampler, grid) is ranked by the mean over
mixtures and NFE budgets (5 / 10 / 20 model calls) of log sliced W2.

    .venv/bin/python bench/defaults_search.py [--mixtures 12] [--n 3000] [--nfe 5,10,20]

Writes bench/cache/defaults_search.json and bench/RESULTS_defaults_search.md (the table that
``DEFAULT_GRIDS`` copies).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import mixtures as mx  # noqa: E402
from tune_grid import random_mixture  # noqa: E402

import diffusionlab as dl  # noqa: E402
from diffusionlab.core.denoiser import (DiscreteDenoiser, EDMDenoiser, FlowDenoiser, NCSNDenoiser,  # noqa: E402
                                        SDEDenoiser)
from diffusionlab.core.protocol import DenoiserInfo  # noqa: E402
from diffusionlab.core.sampling import model_kind  # noqa: E402
from diffusionlab.core.schedules import DiscreteSchedule  # noqa: E402
from diffusionlab.core.sde import VESDE, VPSDE  # noqa: E402

REF_SIGMA = 1000.0


def kind_infos() -> dict[str, DenoiserInfo]:
    """The DenoiserInfo of one real model of each kind (the network plays no part)."""
    net = torch.nn.Identity()
    lin = DiscreteSchedule.from_name("linear", 1000)
    dens = {
        "vp_discrete": DiscreteDenoiser(net, lin, "eps"),
        "vp_ztsnr": DiscreteDenoiser(net, DiscreteSchedule.from_name("linear", 1000, zero_terminal_snr=True), "v"),
        "edm": EDMDenoiser(net),
        "sde_vp": SDEDenoiser(net, VPSDE()),
        "sde_ve": SDEDenoiser(net, VESDE()),
        "ncsn": NCSNDenoiser(net, 0.01, 50.0, levels=126),
        "flow": FlowDenoiser(net),
    }
    infos = {"bare": DenoiserInfo()}
    infos.update({k: d.info for k, d in dens.items()})
    for k, info in infos.items():
        assert model_kind(info) == k, (k, model_kind(info))
    return infos


class Emulated:
    """The exact mixture denoiser declaring ``info`` (sigma = inf: the mixture mean)."""

    def __init__(self, mixture, info):
        self.mixture, self.info = mixture, info
        self.mean = (mixture.weights[:, None] * mixture.means).sum(0)

    def __call__(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).flatten()
        if bool(torch.isinf(s).any()):
            return self.mean.to(x.dtype).expand_as(x).clone()
        return self.mixture.denoise(x, s)


def grids_for(kind: str, info: DenoiserInfo) -> list[str]:
    out = ["karras", "exponential", "tuned", "flow"]
    if info.table_sigmas is not None:
        out = ["trailing", "linspace"] + out
    if info.ladder is not None:
        out.append("ladder")
    return out


LANGEVIN = ("pc", "annealed_langevin")  # corrector loops with their own step rules: not a grid question


def searched_samplers(stochastic: bool = False) -> list[str]:
    """The deterministic fixed-NFE samplers; with ``stochastic`` also the stochastic ones (their
    score then includes the sampling noise: the reference is the ODE solution of the same start)."""
    return [n for n, s in dl.SAMPLERS.items()
            if s.fixed_nfe and n not in LANGEVIN and (stochastic or not s.stochastic)]


def steps_for(name: str, budget: int) -> int | None:
    info = dl.SAMPLERS[name]
    best = None
    for s in range(1, budget + 1):
        if info.count_nfe(s) <= budget:
            best = s
    return best


def reference(mixture, z):
    """The exact probability-flow ODE solution for noise z started at sigma 1000 (VP prior)."""
    ref = Emulated(mixture, DenoiserInfo(prior="vp"))
    return dl.sample(ref, z.shape, "ode", sigmas=[REF_SIGMA, 1e-4, 0.0], noise=z, rtol=1e-7, atol=1e-7)


def cpu_kind() -> str:
    """The CPU model and kind (AVX2 / AVX-512 / AMX), as run.json records it."""
    from diffusionlab.core.devices import cpu_info
    c = cpu_info()
    return f"{c['model']} ({c['kind']}, fast bf16: {c['fast_bf16']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mixtures", type=int, default=16)
    ap.add_argument("--seed-base", type=int, default=2000, help="mixture i is random_mixture(seed_base + i)")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--kinds", default=None, help="comma list (default: all)")
    ap.add_argument("--cache", default="bench/cache/defaults_search.json")
    ap.add_argument("--out", default="bench/RESULTS_defaults_search.md")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--stochastic", action="store_true", help="also the stochastic samplers (ddpm, ancestral, SDE)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    budgets = [int(v) for v in a.nfe.split(",")]
    infos = kind_infos()
    kinds = a.kinds.split(",") if a.kinds else list(infos)
    cache = Path(a.cache)
    data = json.loads(cache.read_text()) if cache.exists() else {"rows": {}}
    t0 = time.perf_counter()
    if not a.report_only:
        for i in range(a.mixtures):
            mix = random_mixture(a.seed_base + i)
            z = torch.randn(a.n, mix.dim, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
            proj = mx.projections(mix.dim, seed=5)
            exact = None
            for kind in kinds:
                info = infos[kind]
                den = Emulated(mix, info)
                for name in searched_samplers(a.stochastic):
                    for grid in grids_for(kind, info):
                        for b in budgets:
                            key = json.dumps([kind, name, grid, b, a.seed_base + i, a.n])
                            if key in data["rows"]:
                                continue
                            if exact is None:
                                exact = mx.sorted_projections(reference(mix, z), proj)
                            steps = steps_for(name, b)
                            try:
                                x = dl.sample(den, z.shape, name, steps=steps, schedule=grid, noise=z,
                                              generator=torch.Generator().manual_seed(4))
                                err = mx.sliced_w2(x, exact, proj)
                            except Exception as e:  # a grid that does not apply is recorded
                                err = f"{type(e).__name__}: {e}"[:200]
                            data["rows"][key] = err
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(data))
            print(f"mixture {i} ({mix.dim}-D) done, {time.perf_counter() - t0:.0f} s", flush=True)
        data["meta"] = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                            command=" ".join([Path(sys.executable).name, *sys.argv]), cpu=cpu_kind(),
                            mixtures=a.mixtures, seeds=[a.seed_base, a.seed_base + a.mixtures - 1], n=a.n,
                            budgets=budgets, torch=torch.__version__,
                            wall_s=round(time.perf_counter() - t0))
        cache.write_text(json.dumps(data))
    Path(a.out).write_text(report(data, kinds, budgets, a.n))
    print(Path(a.out).read_text())
    return 0


def summarize(data, n):
    """(kind, sampler, grid) -> {budget: mean log sW2 over mixtures}; failures -> inf."""
    acc: dict = {}
    for key, err in data["rows"].items():
        kind, name, grid, b, i, nn = json.loads(key)
        if nn != n:
            continue
        v = math.log(max(err, 1e-12)) if isinstance(err, (int, float)) and math.isfinite(err) else math.inf
        acc.setdefault((kind, name, grid), {}).setdefault(b, []).append(v)
    return {k: {b: float(np.mean(v)) for b, v in d.items()} for k, d in acc.items()}


def choose(summary, budgets):
    """kind -> sampler -> [(grid, score)] sorted (score: mean over budgets of mean log sW2)."""
    out: dict = {}
    for (kind, name, grid), per in summary.items():
        score = float(np.mean([per.get(b, math.inf) for b in budgets]))
        out.setdefault(kind, {}).setdefault(name, []).append((grid, score, per))
    for kind in out:
        for name in out[kind]:
            out[kind][name].sort(key=lambda r: r[1])
    return out


def report(data, kinds, budgets, n) -> str:
    meta = data.get("meta", {})
    ch = choose(summarize(data, n), budgets)
    lines = ["# Default grids and samplers chosen by measurement", "",
             f"- date: {meta.get('date')}; command: `{meta.get('command')}`; CPU: {meta.get('cpu')}",
             f"- choosing set: {meta.get('mixtures')} random mixtures (bench/tune_grid.py's family, seeds "
             f"{meta.get('seeds')}; the 'tuned' grid was fitted on seeds 1000-1011), "
             f"{n} samples, NFE budgets {budgets}; score: mean over mixtures of log sliced W2 to the exact "
             "ODE solution for the same noise (lower is better; exp(score) is a geometric-mean error)",
             "- held out: ring8, scales, aniso64, tri3 (bench/RESULTS_defaults_vs_diffusers.md) and the trained "
             "models (bench/RESULTS_defaults_trained.md)", ""]
    best_sampler = {}
    for kind in kinds:
        if kind not in ch:
            continue
        lines += [f"## {kind}", "", "| sampler | best grid | geo-mean sW2 @" + " @".join(map(str, budgets))
                  + " | runner-up | its sW2 | 3rd |", "|---|---|" + "---:|" * len(budgets) + "---|---|---|"]
        rows = sorted(ch[kind].items(), key=lambda kv: kv[1][0][1])
        for name, ranked in rows:
            g, s, per = ranked[0]
            r2 = ranked[1] if len(ranked) > 1 else ("-", math.inf, {})
            r3 = ranked[2][0] if len(ranked) > 2 else "-"
            vals = " | ".join(f"{math.exp(per[b]):.4f}" if math.isfinite(per.get(b, math.inf)) else "fail"
                              for b in budgets)
            v2 = "/".join(f"{math.exp(r2[2][b]):.4f}" if math.isfinite(r2[2].get(b, math.inf)) else "fail"
                          for b in budgets) if r2[2] else "-"
            lines.append(f"| {name} | {g} | {vals} | {r2[0]} | {v2} | {r3} |")
        best_sampler[kind] = rows[0][0]
        lines += ["", f"best sampler at its best grid: **{rows[0][0]}** ({rows[0][1][0][0]})", ""]
    lines += ["## The table (copied into diffusionlab.core.sampling.DEFAULT_GRIDS)", "", "```python"]
    for kind in kinds:
        if kind in ch:
            lines.append(f"{kind!r}: " + json.dumps({n_: r[0][0] for n_, r in sorted(ch[kind].items())}) + ",")
    lines += ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
