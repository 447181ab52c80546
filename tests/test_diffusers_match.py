"""Our samplers equal diffusers' schedulers on the same timestep grid.

The model is the exact denoiser of a 2-D Gaussian mixture on the linear 1000-step VP schedule:
ours wraps it as ``DiscreteDenoiser(AnalyticNet)`` (float64); diffusers gets the eps-prediction
evaluated at the sigma the scheduler believes it is at. diffusers keeps its tables in float32 (and
some schedulers cast the state to float32 in ``step()``), hence the 1e-4 relative tolerance.

Run in the bench venv (diffusers installed):

    .venv-bench/bin/python -m pytest -m bench tests/test_diffusers_match.py

diffusers settings needed to match ours: ``clip_sample=False`` (DDIM/DDPM/Heun clip x0 by
default), ``final_sigmas_type="zero"`` and ``lower_order_final=True`` (both diffusers' defaults;
our multistep samplers also go to sigma = 0 with the last x0 prediction). Where the two define a
spacing differently, ours gets diffusers' grid as explicit ``sigmas=`` (see GRID_DIFFERS).
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.denoiser import DiscreteDenoiser
from diffusionlab.core.schedules import DiscreteSchedule, get_sigmas
from oracles import AnalyticNet, GaussianOracle, MixtureOracle

try:
    import diffusers
except ImportError:  # the project venv: these tests are deselected there unless -m bench
    diffusers = None

pytestmark = [pytest.mark.bench, pytest.mark.skipif(
    diffusers is None, reason="diffusers is not installed: run `.venv-bench/bin/python -m pytest -m bench "
                              "tests/test_diffusers_match.py` (make bench-venv builds that venv)")]

F64 = torch.float64
RTOL = 1e-4
T = 1000
SIGMA_BASED = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler"}
# (scheduler, spacing) pairs whose timesteps are not ours for that name: DPM-Solver and UniPC
# space n + 1 points and drop the last for 'leading' / 'linspace'; Euler / Heun 'linspace' keeps
# fractional timesteps and interpolates sigma linearly in sigma (ours rounds to table entries).
GRID_DIFFERS = {("DPMSolverMultistepScheduler", "leading"), ("DPMSolverMultistepScheduler", "linspace"),
                ("UniPCMultistepScheduler", "leading"), ("UniPCMultistepScheduler", "linspace"),
                ("EulerDiscreteScheduler", "linspace"), ("HeunDiscreteScheduler", "linspace")}


@pytest.fixture(scope="module")
def model():
    means = torch.tensor([[-0.6, -0.5], [0.55, 0.45], [0.1, 0.7]], dtype=F64)
    oracle = MixtureOracle(means, torch.tensor([0.08, 0.15, 0.03], dtype=F64), torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    sched = DiscreteSchedule.from_name("linear", T)
    return DiscreteDenoiser(AnalyticNet(oracle, sched.sigmas, "eps"), sched, "eps"), oracle


def make_scheduler(cls_name: str, **kwargs):
    cls = getattr(diffusers, cls_name)
    accepted = inspect.signature(cls.__init__).parameters
    base = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon", clip_sample=False, thresholding=False, final_sigmas_type="zero")
    return cls(**{k: v for k, v in base.items() if k in accepted}, **kwargs)


def believed_sigma(scheduler, i: int, t) -> float:
    if hasattr(scheduler, "sigmas"):
        return float(scheduler.sigmas[i])
    abar = float(scheduler.alphas_cumprod[int(t)])
    return math.sqrt((1 - abar) / abar)


def run_diffusers(scheduler, oracle, z):
    """diffusers' sampling loop around the exact eps model; returns (x0, model calls, the sigma
    grid it walked, ending in 0)."""
    x = z * float(scheduler.init_noise_sigma)
    seen = []
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        s = believed_sigma(scheduler, i, t)
        xs = x_in * math.sqrt(1 + s ** 2)
        eps = (xs - oracle(xs, torch.full((len(z),), s, dtype=F64))) / s
        seen.append(s)
        x = scheduler.step(eps, t, x).prev_sample
    grid = [s for k, s in enumerate(seen) if k == 0 or s != seen[k - 1]] + [0.0]  # Heun repeats sigmas
    return x, len(seen), torch.tensor(grid, dtype=F64)


def our_noise(scheduler, z, sigma_max: float):
    """The unit noise that makes our start equal diffusers' x_T: VP schedulers start at z
    (in sigma-space z sqrt(1 + sigma_max^2), which is our prior); Euler / Heun start at
    z * init_noise_sigma, which is sigma_max itself for 'linspace' / 'trailing'."""
    if type(scheduler).__name__ in SIGMA_BASED:
        return z * float(scheduler.init_noise_sigma) / math.sqrt(1 + sigma_max ** 2)
    return z


def assert_matches(ours, theirs):
    rel = float((ours - theirs).norm() / theirs.norm())
    worst = float((ours - theirs).abs().max())
    assert rel < RTOL and worst < RTOL * float(theirs.abs().max()), (rel, worst)


def compare(model, name, cls_name, steps, spacing=None, scheduler_kw=None, our_kw=None, timesteps=None,
            by_name=None):
    """Run both on the same grid: ours by the schedule name ``spacing`` (after checking that it
    is diffusers' grid) unless that name means another grid by definition (GRID_DIFFERS) or
    diffusers got custom timesteps; then ours gets diffusers' sigmas explicitly."""
    if name not in dl.SAMPLERS:
        pytest.skip(f"{name!r} is not in diffusionlab.SAMPLERS yet")
    den, oracle = model
    scheduler = make_scheduler(cls_name, **(scheduler_kw or {}))
    scheduler.set_timesteps(**({"timesteps": timesteps} if timesteps is not None else {"num_inference_steps": steps}))
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    theirs, calls, grid = run_diffusers(scheduler, oracle, z)
    if by_name is None:
        by_name = spacing is not None and timesteps is None and (cls_name, spacing) not in GRID_DIFFERS
    if by_name:
        ours_grid = get_sigmas(spacing, steps, den.sigma_min, den.sigma_max, table_sigmas=den.table_sigmas)
        # rtol 1e-3: diffusers' float32 alphas_cumprod keeps 1 - abar to ~4 digits at t = 0
        assert torch.allclose(ours_grid, grid, rtol=1e-3), f"{spacing} grids differ:\n{ours_grid}\n{grid}"
        where = dict(steps=steps, schedule=spacing)
    else:
        where = dict(steps=len(grid) - 1, sigmas=grid)
    ours, info = dl.sample(den, z.shape, name, noise=our_noise(scheduler, z, float(grid[0])), return_info=True,
                           **where, **(our_kw or {}))
    assert info["nfe"] == calls
    assert_matches(ours, theirs)


# ---------------------------------------------------------------------------------- DDIM
def ddim_is_consistent(scheduler) -> bool:
    """diffusers' DDIM steps from t to t - T // n, not to the next listed timestep: the same
    thing only when the listed timesteps are spaced exactly T // n ('leading'; 'trailing' when n
    divides T; never 'linspace')."""
    ts = scheduler.timesteps.tolist()
    stride = T // scheduler.num_inference_steps
    return all(a - stride == b for a, b in zip(ts, ts[1:])) and ts[-1] - stride < 0


@pytest.mark.parametrize("steps", [10, 7, 50])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_matches_diffusers_ddim(model, spacing, steps):
    """Our 'ddim' picks diffusers' DDIM timesteps for every spacing. Where diffusers' DDIM step is
    consistent with its own timesteps it matches DDIMScheduler; elsewhere (linspace; trailing
    with n not dividing 1000) it matches DDIM on those same timesteps, written as diffusers'
    first-order DPM-Solver++ (which is DDIM)."""
    ddim = make_scheduler("DDIMScheduler", timestep_spacing=spacing)
    ddim.set_timesteps(steps)
    den, _ = model
    ours_t = get_sigmas(spacing, steps, table_sigmas=den.table_sigmas)[:-1]
    assert torch.allclose(ours_t, den.table_sigmas[ddim.timesteps], rtol=1e-12), "DDIM timesteps differ"
    if ddim_is_consistent(ddim):
        compare(model, "ddim", "DDIMScheduler", steps, spacing, dict(timestep_spacing=spacing))
    else:
        compare(model, "ddim", "DPMSolverMultistepScheduler", steps, spacing,
                dict(algorithm_type="dpmsolver++", solver_order=1), timesteps=ddim.timesteps.tolist(), by_name=True)


# ---------------------------------------------------------------------------------- multistep
GRIDS = ["trailing", "leading", "linspace", "karras", "exponential"]


def _grid_kw(grid: str, cls_name: str) -> dict:
    """diffusers' config for one of our grid names. Karras / exponential sigmas in Euler / Heun span
    the range of the spaced timesteps: with 'linspace' that is the whole table, as ours."""
    if grid not in ("karras", "exponential"):
        return dict(timestep_spacing=grid)
    return {f"use_{grid}_sigmas": True, **({"timestep_spacing": "linspace"} if cls_name in SIGMA_BASED else {})}


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("grid", GRIDS)
def test_dpmpp_2m_matches_diffusers(model, grid, steps):
    cls_name = "DPMSolverMultistepScheduler"
    compare(model, "dpmpp_2m", cls_name, steps, grid,
            dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
                 euler_at_final=False, **_grid_kw(grid, cls_name)))


def test_dpmpp_3m_is_third_order_where_diffusers_is_second():
    """A known, deliberate difference. diffusers' DPM-Solver++(3M) (like the reference code and
    k-diffusion) adds -phi_3 * D2 with D2 = (D1_0 - D1_1) / (r0 + r1); a Taylor expansion gives
    D2 = h^2 D''/2, so the third-order term needs -2 phi_3 * D2, which ours uses. On Gaussian data
    (exact flow known), on a log-uniform grid, halving the step cuts our error about 2^3-2^4 times
    and diffusers' about 2^2 times. (2M has no such term: it matches exactly, above.)"""
    if "dpmpp_3m" not in dl.SAMPLERS:
        pytest.skip("'dpmpp_3m' is not in diffusionlab.SAMPLERS yet")
    oracle = GaussianOracle(torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([0.01, 0.2], dtype=F64))
    sched = DiscreteSchedule.from_name("linear", T)
    den = DiscreteDenoiser(AnalyticNet(oracle, sched.sigmas, "eps"), sched, "eps")
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = {"ours": [], "diffusers": []}
    for steps in (40, 80):
        scheduler = make_scheduler("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=3,
                                   use_exponential_sigmas=True)
        scheduler.set_timesteps(steps)
        theirs, _, grid = run_diffusers(scheduler, oracle, z)
        ours = dl.sample(den, z.shape, "dpmpp_3m", steps=steps, sigmas=grid, noise=z)
        # exact: the flow to the last positive sigma, then the (linear) denoiser of the final step
        s_max, s_last = float(grid[0]), float(grid[-2])
        flow = oracle.flow(z * math.sqrt(1 + s_max ** 2), s_max, s_last)
        exact = oracle(flow, torch.full((len(z),), s_last, dtype=F64))
        errors["ours"].append(float((ours - exact).norm(dim=1).mean()))
        errors["diffusers"].append(float((theirs - exact).norm(dim=1).mean()))
    ours_ratio, their_ratio = (e[0] / e[1] for e in (errors["ours"], errors["diffusers"]))
    assert ours_ratio > 8 and their_ratio < 6, errors
    assert errors["ours"][1] < errors["diffusers"][1] / 4, errors


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("grid", GRIDS)
def test_unipc_bh2_order2_matches_diffusers(model, grid, steps):
    cls_name = "UniPCMultistepScheduler"
    compare(model, "unipc", cls_name, steps, grid,
            dict(solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=[],
                 **_grid_kw(grid, cls_name)),
            our_kw=dict(order=2, variant="bh2"))


# ---------------------------------------------------------------------------------- Euler / Heun
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name,cls_name", [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")])
def test_euler_and_heun_match_diffusers(model, name, cls_name, grid, steps):
    compare(model, name, cls_name, steps, grid, _grid_kw(grid, cls_name))


# ---------------------------------------------------------------------------------- flow matching
def _flow_scheduler(shift: float, steps: int):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_a_flow_model_matches_flow_match_euler(shift, steps):
    """diffusers' FlowMatchEulerDiscreteScheduler loop (x = noise; v = model(x, t); x = step(v))
    around the exact velocity of Gaussian data (test_processes.FlowNet, told the flow time the
    scheduler believes, ``scheduler.sigmas[i]``) equals our 'euler' on a FlowDenoiser over the
    same grid mapped to sigma-space (t = 1 -> sigma = inf). step() casts the state to float32,
    hence atol 1e-5 (measured: at most 2e-7 / 4e-7 / 1e-6 at 4 / 10 / 28 steps, |x| up to 3)."""
    from diffusionlab.core.denoiser import FlowDenoiser, flow_sigma
    from test_processes import FlowNet
    net = FlowNet()
    scheduler = _flow_scheduler(shift, steps)
    z = torch.randn(512, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = z.clone()  # flow pipelines start at the unit noise itself (no init_noise_sigma)
    calls = 0
    for i, t in enumerate(scheduler.timesteps):
        flow_t = float(scheduler.sigmas[i])
        v = net(x.to(F64), torch.full((len(z),), (T - 1) * flow_t, dtype=F64))
        calls += 1
        x = scheduler.step(v, t, x).prev_sample
    grid = flow_sigma(scheduler.sigmas.to(F64))
    assert math.isinf(grid[0]) and grid[-1] == 0
    ours, info = dl.sample(FlowDenoiser(net, shift=shift), z.shape, "euler", sigmas=grid, noise=z, return_info=True)
    assert info["nfe"] == calls == steps
    assert torch.allclose(ours, x.to(F64), atol=1e-5, rtol=0), float((ours - x).abs().max())


@pytest.mark.parametrize("steps", [4, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_our_flow_grid_is_flow_match_eulers_up_to_its_double_shift(shift, steps):
    """Our default 'flow' grid vs FlowMatchEuler's sigmas. diffusers' sigma_min is the already
    shifted 1/1000 (``__init__``), and set_timesteps spaces from it and shifts again, so its
    last positive point is shifted twice: sigma = shift^2 * 0.001/0.999 (flow time 0.00893 at shift
    3) where ours is shift * 0.001/0.999 (flow time 0.00299, the model's sigma_min). All the other
    points move with it, by (unshifted) i / (n - 1) of that gap. So: at shift 1 the grids are
    equal (float32 apart); at shift 3 the first point is equal, the last positive sigma is exactly
    3x ours, every point is within 0.006 in flow time (measured: 0.0014 / 0.0035 / 0.0050 at 4 /
    10 / 28 steps, the last positive point excluded), and our grid with sigma_min = shift x the
    model's reproduces diffusers' exactly."""
    from diffusionlab.core.denoiser import FlowDenoiser, flow_sigma, flow_time
    from test_processes import FlowNet
    den = FlowDenoiser(FlowNet(), shift=shift)
    theirs_t = _flow_scheduler(shift, steps).sigmas.to(F64)
    ours = dl.resolve_sigmas(den, steps, schedule="flow")
    ours_t = flow_time(ours)
    assert len(ours) == len(theirs_t) == steps + 1 and ours_t[0] == theirs_t[0] == 1 and ours[-1] == theirs_t[-1] == 0
    assert torch.allclose(ours_t, theirs_t, atol=1e-7) == (shift == 1.0)
    assert flow_sigma(theirs_t[-2]).item() == pytest.approx(shift * ours[-2].item(), rel=1e-6)
    assert float((ours_t - theirs_t).abs()[:-2].max()) < 0.006
    doubled = dl.resolve_sigmas(den, steps, schedule="flow", sigma_min=shift * den.sigma_min)
    assert torch.allclose(flow_time(doubled), theirs_t, atol=1e-7, rtol=0)
