"""Flow matching as a process: the sigma-space mapping is exact, the exact flow velocity of
Gaussian data is the exact VP denoiser at the matched noise level, the shift is sigma' = s sigma,
the 'flow' grid is SD3's / diffusers' FlowMatchEuler grid and our Euler on it is the flow Euler
loop x <- x + (t' - t) v. (The equality with diffusers' scheduler itself runs under the bench
marker in test_diffusers_match.py.)"""
import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.denoiser import FlowDenoiser, FlowPrecond, SDEDenoiser, append_dims, flow_sigma, flow_time
from diffusionlab.core.losses import FlowLoss
from diffusionlab.core.schedules import get_sigmas
from diffusionlab.core.sde import VPSDE
from diffusionlab.models.processes import DiffusionConfig, build_denoiser, fill
from test_processes import ORACLE, FlowNet, SDENet

F64 = torch.float64
SIGMAS = [1e-3, 0.05, 0.3, 1.0, 4.0, 60.0, 2e3]


def _draw(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=F64), torch.randn(n, 4, generator=g, dtype=F64)


@pytest.mark.parametrize("sigma", SIGMAS + [math.inf])
def test_the_mapping_round_trips_x0_eps_and_v(sigma):
    """x = x0 + sigma eps -> the network input is x_t = (1 - t) x0 + t eps, and c_skip x + c_out v
    with v = eps - x0 gives back x0 (at sigma = inf x holds x_1 = eps itself)."""
    x0, eps = _draw()
    s = torch.full((len(x0),), sigma, dtype=F64)
    t = flow_time(s)
    c_skip, c_out, c_in, c_noise = (append_dims(c, 2) for c in FlowPrecond()(s))
    x = eps if math.isinf(sigma) else x0 + sigma * eps
    x_t = (1 - append_dims(t, 2)) * x0 + append_dims(t, 2) * eps
    assert torch.allclose(c_in * x, x_t, atol=1e-12)
    v = eps - x0
    assert torch.allclose(c_skip * x + c_out * v, x0, atol=1e-9 * max(1.0, sigma if math.isfinite(sigma) else 1))
    # eps back from x0 and v, and the time <-> sigma maps are inverse
    assert torch.allclose(x0 + v, eps, atol=1e-12)
    assert torch.allclose(c_noise.flatten(), 999 * t)
    if math.isfinite(sigma):
        assert flow_sigma(t)[0].item() == pytest.approx(sigma, rel=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_exact_flow_velocity_is_the_exact_vp_denoiser(sigma):
    """The exact velocity of Gaussian data turned into a denoiser equals the posterior mean
    E[x0 | x0 + sigma eps] and the exact VP-v model's denoiser at the same sigma."""
    flow = FlowDenoiser(FlowNet(), shift=2.0)
    vp = SDEDenoiser(SDENet(VPSDE(), "v"), VPSDE(), "v")
    g = torch.Generator().manual_seed(1)
    x = ORACLE.mu + torch.randn(16, 4, generator=g, dtype=F64) * math.sqrt(1 + sigma ** 2)
    s = torch.full((16,), sigma, dtype=F64)
    assert torch.allclose(flow(x, s), ORACLE(x, s), rtol=1e-7, atol=1e-9)
    if VPSDE().sigma_min <= sigma <= VPSDE().sigma_max:
        assert torch.allclose(flow(x, s), vp(x, s), rtol=1e-6, atol=1e-8)


def test_at_pure_noise_the_denoiser_is_the_data_mean():
    flow = FlowDenoiser(FlowNet())
    x = torch.randn(8, 4, dtype=F64)
    out = flow(x, torch.full((8,), math.inf, dtype=F64))
    assert torch.allclose(out, ORACLE.mu.expand(8, 4), atol=1e-12)


def test_shift_is_sigma_times_s_and_sd3s_time_shift():
    """SD3 / Flux's t' = s t / (1 + (s - 1) t) is sigma' = s sigma; the 'flow' grid is uniform in
    the unshifted t from 1 to t_min, then shifted."""
    s, steps = 3.0, 8
    t = torch.linspace(1, 1e-3, steps, dtype=F64)
    shifted_t = s * t / (1 + (s - 1) * t)
    expect = torch.cat([flow_sigma(shifted_t), torch.zeros(1, dtype=F64)])
    den = FlowDenoiser(FlowNet(), shift=s)
    grid = dl.resolve_sigmas(den, steps, schedule="flow")
    assert math.isinf(grid[0]) and grid[-1] == 0
    assert torch.allclose(grid[1:-1], expect[1:-1], rtol=1e-10)
    plain = dl.resolve_sigmas(FlowDenoiser(FlowNet()), steps, schedule="flow")
    assert torch.allclose(grid[1:-1], s * plain[1:-1], rtol=1e-10)
    # a sampling-time shift overrides the model's own (on the model's own sigma range)
    over = dl.resolve_sigmas(FlowDenoiser(FlowNet()), steps, schedule="flow", shift=s)
    assert torch.equal(over, get_sigmas("flow", steps, FlowDenoiser(FlowNet()).sigma_min, math.inf, shift=s))
    assert over[-2].item() == pytest.approx(plain[-2].item(), rel=1e-12) and bool((over[1:-2] > plain[1:-2]).all())
    # on a finite range the grid hits both ends
    g = get_sigmas("flow", 5, 0.01, 50.0, shift=2.0)
    assert g[0].item() == pytest.approx(50.0) and g[-2].item() == pytest.approx(0.01)


def test_our_euler_on_the_flow_grid_is_the_flow_euler_loop():
    """x_t <- x_t + (t_next - t) v(x_t, t) from x_1 = noise (diffusers' FlowMatchEuler step)
    equals dl.sample(flow model, 'euler') on the same grid, mapped to sigma."""
    net = FlowNet()
    den = FlowDenoiser(net, shift=3.0)
    z = torch.randn(500, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    grid = dl.resolve_sigmas(den, 12, schedule="flow")
    ts = flow_time(grid)
    x = z.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = net(x, torch.full((len(x),), 999 * float(t), dtype=F64))
        x = x + (float(t_next) - float(t)) * v
    ours = dl.sample(den, z.shape, "euler", sigmas=grid, noise=z)
    assert torch.allclose(ours, x, atol=1e-10)


def test_flow_loss_is_the_velocity_mse_and_draws_logit_normal_t():
    loss_fn = FlowLoss(p_mean=0.0, p_std=1.0, shift=1.0)
    x0, eps = _draw(200, 2)
    sigma = torch.exp(torch.randn(200, generator=torch.Generator().manual_seed(4), dtype=F64))
    net = FlowNet(shift=0.1)
    t = flow_time(sigma)
    x_t = (1 - append_dims(t, 2)) * x0 + append_dims(t, 2) * eps
    expect = ((net(x_t, 999 * t) - (eps - x0)) ** 2).mean(1)
    assert torch.allclose(loss_fn(net, x0, sigma=sigma, eps=eps).to(F64), expect, rtol=1e-6)
    drawn, _ = loss_fn.draw(torch.zeros(20000, 2), torch.Generator().manual_seed(0))
    logit_t = torch.logit(flow_time(drawn))
    assert logit_t.mean().item() == pytest.approx(0.0, abs=0.03) and logit_t.std().item() == pytest.approx(1.0, rel=0.03)
    shifted, _ = FlowLoss(shift=3.0).draw(torch.zeros(20000, 2), torch.Generator().manual_seed(0))
    assert torch.allclose(shifted, 3.0 * drawn)


def test_the_registry_entry_fills_its_defaults_and_refuses_other_processes_options():
    d = fill(DiffusionConfig(process="flow"), (1, 8, 8))
    assert (d.p_mean, d.p_std, d.shift) == (0.0, 1.0, 1.0)
    den = build_denoiser(torch.nn.Identity(), DiffusionConfig(process="flow", shift=3.0), (1, 8, 8))
    assert isinstance(den, FlowDenoiser) and den.info.shift == 3.0 and math.isinf(den.info.sigma_max)
    with pytest.raises(ValueError, match="shift applies to process flow"):
        fill(DiffusionConfig(process="edm", shift=3.0), (1, 8, 8))
    with pytest.raises(ValueError, match="objective"):
        fill(DiffusionConfig(process="flow", objective="eps"), (1, 8, 8))
    with pytest.raises(ValueError, match="shift"):
        FlowDenoiser(torch.nn.Identity(), shift=0.0)


def test_flow_likelihood_and_wrappers_run_unchanged():
    """The ODE likelihood of Gaussian data under the exact flow model is the exact one, and the
    guidance wrappers take a flow model as any other."""
    from diffusionlab.core.cfg import ClassifierFree
    from diffusionlab.core.guidance import Clipped
    den = FlowDenoiser(FlowNet())
    x0 = ORACLE.mu + ORACLE.var.sqrt() * torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    logp, _ = dl.log_likelihood(den, x0, exact_divergence=True, rtol=1e-7, atol=1e-7)
    exact = torch.distributions.Normal(ORACLE.mu, ORACLE.var.sqrt()).log_prob(x0).sum(1)
    assert torch.allclose(logp.to(F64), exact, atol=2e-3), (logp - exact).abs().max()
    x = dl.sample(Clipped(den), (8, 4), seed=0)
    assert x.shape == (8, 4) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_cli_trains_a_shifted_flow_model_and_samples_with_a_shift(tmp_path):
    import json

    from diffusionlab.apps.cli import main
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress",
            "--process", "flow", "--shift", "2", "--p-std", "0.8", "--steps", "2", "--out", str(run)]
    assert main(argv) == 0
    cfg = json.loads((run / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert (cfg["diffusion"]["shift"], cfg["diffusion"]["p_std"]) == (2.0, 0.8)
    den = dl.load_denoiser(run)
    assert isinstance(den, FlowDenoiser) and den.info.shift == 2.0
    out = tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "3", "--shift", "4", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--shift", "-1", "--out", str(out)]) == 2
    assert main(["train", "--preset", "tiny", "--data", "digits", "--process", "edm", "--shift", "2",
                 "--out", str(tmp_path / "bad")]) == 2
