import pytest
import torch

from diffusionlab import Unet


@pytest.mark.parametrize("kw,size", [
    (dict(dim=8, dim_mults=(1, 2), channels=1, groups=4), 28),
    (dict(dim=8, dim_mults=(1, 2, 2), channels=3, groups=4, num_res_blocks=2), 32),
    (dict(dim=8, dim_mults=(1, 2), channels=1, groups=4, block="convnext"), 16),
    (dict(dim=8, dim_mults=(1, 2), channels=3, groups=4, learned_sinusoidal=True, dropout=0.1), 24),
    (dict(dim=8, dim_mults=(1, 2, 2), channels=1, groups=4, full_attn=(True, False, True), linear_attn=True), 32),
    (dict(dim=8, dim_mults=(1, 2), channels=1, groups=4, full_attn=False, linear_attn=False, mid_attn=False), 8),
])
def test_shapes_and_gradients(kw, size):
    torch.manual_seed(0)
    net = Unet(**kw)
    torch.nn.init.normal_(net.final_conv.weight, std=0.1)  # the zero-initialised output would hide the path
    x = torch.randn(2, kw["channels"], size, size, requires_grad=True)
    out = net(x, torch.tensor([3.5, 999.0]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_fractional_timesteps_change_the_output():
    torch.manual_seed(0)
    net = Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4)
    torch.nn.init.normal_(net.final_conv.weight, std=0.1)
    x = torch.randn(1, 1, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([10.0])), net(x, torch.tensor([10.5])))


def test_learned_variance_doubles_output_channels():
    net = Unet(dim=8, dim_mults=(1, 2), channels=3, groups=4, learned_variance=True)
    assert net(torch.randn(1, 3, 8, 8), torch.tensor([1.0])).shape == (1, 6, 8, 8)


def test_conditioning_hook():
    torch.manual_seed(0)
    net = Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4, num_classes=10)
    torch.nn.init.normal_(net.final_conv.weight, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 5.0])
    a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([1, 2]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    vec = Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4, cond_dim=5)
    assert vec(x, t, torch.randn(2, 5)).shape == x.shape
    with pytest.raises(ValueError, match="without conditioning"):
        Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4)(x, t, torch.tensor([1, 2]))


def test_image_size_must_fit_the_levels():
    net = Unet(dim=8, dim_mults=(1, 2, 2, 2), channels=1, groups=4)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 1, 28, 28), torch.tensor([1.0]))


def test_seed_tutorial_constructor_defaults():
    net = Unet(dim=64, dim_mults=(1, 2, 4, 8))
    assert net.channels == 3 and net.config["dim_mults"] == [1, 2, 4, 8]
