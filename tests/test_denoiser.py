import math

import pytest
import torch

from diffusionlab.core.denoiser import PRECONDITIONING, DiscreteDenoiser
from diffusionlab.core.schedules import DiscreteSchedule
from oracles import AnalyticNet, GaussianOracle

F64 = torch.float64


@pytest.mark.parametrize("objective", sorted(PRECONDITIONING))
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_wrapped_network_equals_the_oracle_at_any_sigma(objective, schedule):
    """A net that outputs the exact eps / x0 / v target at fractional t, wrapped by the
    discrete adapter, is the optimal denoiser at every sigma in range (table or in between)."""
    oracle = GaussianOracle(torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([0.1, 0.4], dtype=F64))
    sched = DiscreteSchedule.from_name(schedule, 1000)
    den = DiscreteDenoiser(AnalyticNet(oracle, sched.sigmas, objective), sched, objective)
    g = torch.Generator().manual_seed(0)
    for sigma in (den.sigma_min, 0.0371, 0.5, 1.0, 3.3, 40.0, den.sigma_max):
        s = torch.full((16,), sigma, dtype=F64)
        x = oracle.mu + torch.randn(16, 2, generator=g, dtype=F64) * math.sqrt(0.3 + sigma ** 2)
        assert torch.allclose(den(x, s), oracle(x, s), rtol=1e-6, atol=1e-6), sigma


def test_sigma_to_t_inverts_the_table_and_interpolates_in_log_sigma():
    sched = DiscreteSchedule.from_name("linear", 1000)
    den = DiscreteDenoiser(torch.nn.Identity(), sched, "eps")
    t = den.sigma_to_t(sched.sigmas)
    assert torch.allclose(t.double(), torch.arange(1000, dtype=F64), atol=1e-3)
    mid = (sched.sigmas[10].log() * 0.25 + sched.sigmas[11].log() * 0.75).exp()
    assert den.sigma_to_t(mid[None]).item() == pytest.approx(10.75, abs=1e-4)
    assert torch.allclose(den.t_to_sigma(torch.tensor([10.75], dtype=F64)), mid[None].double(), rtol=1e-9)
    # out-of-range sigmas clamp to the table ends
    assert den.sigma_to_t(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]


def test_prior_std_is_vp():
    sched = DiscreteSchedule.from_name("linear", 1000)
    den = DiscreteDenoiser(torch.nn.Identity(), sched, "eps")
    assert den.prior_std(den.sigma_max) == pytest.approx(math.sqrt(1 + den.sigma_max ** 2))
    # x_T = N(0, I) in VP coordinates exactly: 1 / sqrt(abar_T)
    assert den.prior_std(den.sigma_max) == pytest.approx(1 / sched.abar[-1].sqrt().item(), rel=1e-9)
