"""The seed tutorials' API, verbatim with our import."""
import numpy as np
import pytest
import torch
from PIL import Image

import diffusionlab as dl
from diffusionlab import (GaussianDiffusion, Trainer, Unet, cosine_beta_schedule, linear_beta_schedule, p_losses,
                          p_sample, q_sample, quadratic_beta_schedule, sigmoid_beta_schedule)
from diffusionlab.core.rng import per_sample_generators


def test_tutorial_lines_run_verbatim():
    model = Unet(dim=64, dim_mults=(1, 2, 4, 8))
    diffusion = GaussianDiffusion(model, image_size=128, timesteps=1000, loss_type='l1')
    training_images = torch.rand(1, 3, 128, 128)
    loss = diffusion(training_images)
    loss.backward()
    assert loss.item() > 0


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_objectives_losses_and_sampling_range(objective, loss_type):
    torch.manual_seed(0)
    model = Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4)
    diffusion = GaussianDiffusion(model, image_size=16, timesteps=50, sampling_timesteps=5, objective=objective,
                                  loss_type=loss_type, beta_schedule="linear")
    loss = diffusion(torch.rand(4, 1, 16, 16))
    loss.backward()
    with torch.no_grad():  # the zero-initialised output layer would make every pred_x0 sample the same
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    # sample() is dl.sample of the model's own denoiser (its declared sampler and steps: DDIM, the
    # 5 sampling_timesteps, eta 0), with the network in eval mode, mapped from [-1, 1] to [0, 1]
    s = diffusion.sample(batch_size=3, generator=per_sample_generators(7, range(3)))
    assert diffusion.model.training                                       # the train mode is restored
    diffusion.model.eval()
    ref = dl.sample(diffusion.denoiser, (3, 1, 16, 16), sampler="ddim", steps=5, seed=7)
    diffusion.model.train()
    assert s.shape == (3, 1, 16, 16)
    torch.testing.assert_close(s, ((ref + 1) / 2).clamp(0, 1), atol=1e-6, rtol=0)
    # sample i is drawn from its own generator: the same seed gives the same images at any batch size
    again = diffusion.sample(batch_size=2, generator=per_sample_generators(7, range(2)))
    torch.testing.assert_close(again, s[:2], atol=1e-6, rtol=0)
    other = diffusion.sample(batch_size=2, generator=per_sample_generators(8, range(2)))
    assert (other - s[:2]).abs().max() > 1e-3
    frames = diffusion.sample(batch_size=2, return_all_timesteps=True, generator=per_sample_generators(7, range(2)))
    assert frames.shape == (2, 5, 1, 16, 16)
    torch.testing.assert_close(frames[:, -1], s[:2], atol=1e-6, rtol=0)   # the last frame is the sample


def test_full_chain_sampling_uses_ddpm_and_size_errors():
    model = Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4)
    diffusion = GaussianDiffusion(model, image_size=8, timesteps=10)
    assert diffusion.sample(batch_size=2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="expects"):
        diffusion(torch.rand(1, 1, 16, 16))


def test_from_scratch_helpers():
    T = 200
    for fn in (linear_beta_schedule, cosine_beta_schedule, quadratic_beta_schedule, sigmoid_beta_schedule):
        assert fn(T).shape == (T,)
    from diffusionlab.core.schedules import DiscreteSchedule
    sched = DiscreteSchedule(linear_beta_schedule(T))
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    t = torch.tensor([0, 199])
    xt = q_sample(sched, x0, t, noise=torch.zeros_like(x0))
    assert torch.allclose(xt[0], sched.abar[0].sqrt().float() * x0[0])
    model = Unet(dim=8, dim_mults=(1, 2), channels=1, groups=4)
    loss = p_losses(model, x0, t, loss_type="huber", schedule=sched)
    loss.backward()
    x = p_sample(lambda x, t: model(x, t.float()), sched, torch.randn(2, 1, 8, 8), 5)
    assert x.shape == (2, 1, 8, 8)


def test_tutorial_trainer_on_an_image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = Unet(dim=8, dim_mults=(1, 2), groups=4)
    diffusion = GaussianDiffusion(model, image_size=16, timesteps=20, sampling_timesteps=3)
    trainer = Trainer(diffusion, str(folder), train_batch_size=4, train_lr=2e-5, train_num_steps=3,
                      gradient_accumulate_every=2, ema_decay=0.995, amp=True, results_folder=str(tmp_path / "res"),
                      progress=False)
    trainer.train()
    assert trainer.step == 3
    assert (tmp_path / "res" / "checkpoints" / "latest").is_file()
    from diffusionlab import load_diffusion
    d2 = load_diffusion(tmp_path / "res")
    assert d2.sample(batch_size=2).shape == (2, 3, 16, 16)
