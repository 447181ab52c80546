"""Loss weightings expressed in x0 space are the same whatever the network's target."""
import pytest
import torch

from diffusionlab.core.denoiser import PRECONDITIONING
from diffusionlab.core.losses import DiscreteLoss, EDMWeighting, MinSNR, per_sample_loss
from diffusionlab.core.schedules import DiscreteSchedule


def x0_space_factor(snr, objective):
    """x0-error^2 = factor * target-error^2 (eps: 1/snr, v: 1/(snr+1), x0: 1)."""
    return {"eps": 1 / snr, "v": 1 / (snr + 1), "x0": torch.ones_like(snr)}[objective]


def _output_weight(weighting, snr, objective):
    sigma = 1 / snr.sqrt()
    return weighting.output_weight(sigma, PRECONDITIONING[objective](sigma)[1])


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_weightings_agree_in_x0_space(objective):
    snr = torch.logspace(-3, 3, 13, dtype=torch.float64)
    # w * target_loss = w / factor * x0_loss: the x0-space weight is w / factor
    edm = _output_weight(EDMWeighting(0.5), snr, objective) / x0_space_factor(snr, objective)
    assert torch.allclose(edm, snr + 4.0)
    ms = _output_weight(MinSNR(5.0), snr, objective) / x0_space_factor(snr, objective)
    assert torch.allclose(ms, snr.clamp(max=5.0))


def test_edm_weight_with_unit_sigma_data_is_plain_v():
    snr = torch.logspace(-3, 3, 7, dtype=torch.float64)
    assert torch.allclose(_output_weight(EDMWeighting(1.0), snr, "v"), torch.ones_like(snr))


def test_loss_types_and_errors():
    p, t = torch.zeros(2, 3), torch.tensor([[1.0, -1, 3], [0.5, 0, 0]])
    assert torch.allclose(per_sample_loss(p, t, "l1"), torch.tensor([5 / 3, 0.5 / 3]))
    assert torch.allclose(per_sample_loss(p, t, "l2"), torch.tensor([11 / 3, 0.25 / 3]))
    assert torch.allclose(per_sample_loss(p, t, "huber"), torch.tensor([(0.5 + 0.5 + 2.5) / 3, 0.125 / 3]))
    with pytest.raises(ValueError, match="loss_type"):
        per_sample_loss(p, t, "l3")
    with pytest.raises(ValueError, match="one loss weighting"):
        DiscreteLoss(DiscreteSchedule.from_name("linear", 10), "v", min_snr_gamma=5, sigma_data=0.5)


def test_perfect_prediction_has_zero_loss_for_every_objective():
    sched = DiscreteSchedule.from_name("cosine", 50)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    g = torch.Generator().manual_seed(0)
    for objective in ("eps", "v", "x0"):
        fn = DiscreteLoss(sched, objective, sigma_data=0.5)
        t, eps = fn.draw(x0, g)
        abar = sched.abar[t].view(-1, 1, 1, 1).float()
        target = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[objective]
        loss = fn(lambda x, tt: target, x0, t=t, eps=eps)
        assert torch.allclose(loss, torch.zeros(4), atol=1e-10)
