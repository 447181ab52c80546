"""Latent diffusion's first stage: the KL autoencoder (shapes, the KL term against the Gaussian
closed form, the loss), the latent scaling measured from data and its round trip, the
autoencoder as a run of the one trainer (exact resume, its checkpoint, the CLI)."""
from __future__ import annotations

import json

import pytest
import torch

from diffusionlab.apps.cli import main
from diffusionlab.core.cond import Batch, Cond
from diffusionlab.errors import UserError
from diffusionlab.models.checkpoint import CheckpointError
from diffusionlab.models.latent import LatentCodec, autoencoder_hash, load_autoencoder
from diffusionlab.models.loading import load_denoiser
from diffusionlab.nn.autoencoder import Autoencoder, kl_to_standard_normal
from diffusionlab.training import Trainer
from diffusionlab.training.autoencoder import AutoencoderLoss, autoencoder_config, latent_stats, train_autoencoder

TINY = dict(data="digits", image_size=8, dim=8, steps=4, batch_size=8, val_every=2, checkpoint_every=2, n_val=16,
            log_every=1, warmup_steps=2)   # scikit-learn's 8x8 digits: seconds per run


@pytest.mark.parametrize("f,c", [(1, 1), (2, 4), (4, 8), (8, 3)])
def test_shapes_for_every_factor(f, c):
    net = Autoencoder(channels=1, latent_channels=c, f=f, dim=8)
    x = torch.randn(2, 1, 32, 32)
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (2, c, 32 // f, 32 // f) == (2, *net.latent_shape((1, 32, 32)))
    assert net.decode(mean).shape == x.shape and net(x).shape == x.shape


def test_impossible_factors_and_sizes_are_refused():
    with pytest.raises(ValueError, match="one of"):
        Autoencoder(f=3)
    with pytest.raises(ValueError, match="do not divide"):
        Autoencoder(f=8).latent_shape((1, 28, 28))
    with pytest.raises(UserError, match="does not divide"):
        Trainer(config=autoencoder_config(out="unused", **{**TINY, "image_size": 28}, f=8))


def test_the_kl_term_is_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    want = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), want)
    assert float(kl_to_standard_normal(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))) == 0.0


class _Fixed(torch.nn.Module):
    """encode: (x scaled, constant log-variance); decode: the identity."""

    latent_channels = 1

    def __init__(self, logvar: float):
        super().__init__()
        self.logvar = logvar

    def encode(self, x):
        return 2 * x, torch.full_like(x, self.logvar)

    def decode(self, z):
        return z


def test_the_loss_is_reconstruction_plus_beta_kl_per_element():
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    net = _Fixed(-2.0)
    for kind, beta in (("l1", 0.0), ("l2", 0.5)):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]        # sample i's own stream
        got = AutoencoderLoss(beta, kind)(net, Batch(x, Cond()), generator=gens)
        again = [torch.Generator().manual_seed(i) for i in range(2)]
        z = 2 * x + torch.exp(torch.tensor(-1.0)) * torch.stack([torch.randn(1, 4, 4, generator=g) for g in again])
        err = (z - x).abs() if kind == "l1" else (z - x).pow(2)
        kl = kl_to_standard_normal(2 * x, torch.full_like(x, -2.0))
        torch.testing.assert_close(got, err.flatten(1).mean(1) + beta * kl / 16)
    val = AutoencoderLoss(1.0, "l1")(net, Batch(x, Cond()), train=False)        # the posterior mean, no KL
    torch.testing.assert_close(val, (2 * x - x).abs().flatten(1).mean(1))
    with pytest.raises(UserError):
        AutoencoderLoss(-1.0)
    with pytest.raises(UserError):
        AutoencoderLoss(loss="huber")


@torch.no_grad()
def test_latent_scaling_is_measured_from_data_and_round_trips():
    torch.manual_seed(0)
    net = Autoencoder(channels=1, latent_channels=3, f=2, dim=8)
    images = torch.rand(64, 1, 16, 16) * 2 - 1
    stats = latent_stats(net, images)
    codec = LatentCodec(net, stats["latent_shift"], stats["latent_scale"], (1, 16, 16))
    z = codec.encode(images)
    # the posterior means' scaled statistics: centred, and at most unit spread (q adds its own variance)
    assert z.mean((0, 2, 3)).abs().max() < 0.25 and float(z.std((0, 2, 3)).max()) <= 1.0 + 1e-3
    # decode(encode(x)) is the network's reconstruction: the scaling cancels exactly
    torch.testing.assert_close(codec.decode(codec.encode(images)), net.decode(net.encode(images)[0]), atol=1e-5, rtol=1e-5)
    lat = torch.randn(4, 3, 8, 8)
    shift, scale = torch.tensor(stats["latent_shift"]), torch.tensor(stats["latent_scale"])
    torch.testing.assert_close(codec.decode(lat), net.decode(lat * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)))
    # measured on samples of q, the statistics are each channel's mean and standard deviation
    mean, _ = net.encode(images)
    assert len(stats["latent_shift"]) == 3 and all(s > 0 for s in stats["latent_scale"])
    assert abs(stats["latent_shift"][0] - float(mean[:, 0].mean())) < 0.1 * stats["latent_scale"][0] + 1e-3


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    res = train_autoencoder(autoencoder_config(out=str(out), **TINY))
    return out, res


def test_an_autoencoder_run_writes_its_checkpoint_stats_grid_and_metrics(ae_run):
    out, res = ae_run
    cfg = json.loads((out / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert cfg["kind"] == "autoencoder" and cfg["autoencoder"]["latent_shape"] == [4, 4, 4]
    assert len(cfg["autoencoder"]["latent_scale"]) == 4 and cfg["autoencoder"]["beta"] == 1e-6
    assert (out / "reconstructions.png").is_file() and res["steps"] == 4 and res["n"] > 100
    assert res["ssim"] is None and res["psnr"] > 0             # 8 px: SSIM's 11 x 11 window does not fit
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in records) and any("heldout_psnr" in r for r in records)
    codec = load_autoencoder(out)
    assert codec.latent_shape == (4, 4, 4) and codec.sha256 == autoencoder_hash(out)
    assert codec.shift.tolist() == pytest.approx(cfg["autoencoder"]["latent_shift"])
    with pytest.raises(CheckpointError, match="holds an autoencoder"):
        load_denoiser(out)


def test_resume_of_an_autoencoder_run_is_exact(tmp_path):
    straight = Trainer(config=autoencoder_config(out=str(tmp_path / "a"), **TINY))
    straight.train()
    first = Trainer(config=autoencoder_config(out=str(tmp_path / "b"), **TINY))
    first.train(stop_after=2)
    resumed = Trainer(config=autoencoder_config(out=str(tmp_path / "b"), **TINY), resume=True)
    assert resumed.step == 2 and resumed.task == "autoencoder"
    resumed.train()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    for a, b in zip(straight.ema.model.state_dict().values(), resumed.ema.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_train_autoencoder_command(tmp_path, capsys):
    out = tmp_path / "ae"
    small = ["--data", "digits", "--image-size", "8"]
    assert main(["train-autoencoder", "--out", str(out), "--f", "4", "--latent-channels", "2", "--dim", "8",
                 "--steps", "2", "--batch-size", "8", "--no-progress", *small]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["latent_shape"] == [2, 2, 2] and res["steps"] == 2 and (out / "reconstructions.png").is_file()
    assert main(["train-autoencoder", "--out", str(out), "--steps", "2"]) == 2          # a run is there: refused
    capsys.readouterr()
    assert main(["train-autoencoder", "--out", str(out), "--steps", "3", "--resume", "--no-progress", *small]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert main(["train-autoencoder", "--out", str(tmp_path / "x"), "--beta", "-1", "--steps", "1"]) == 2
    assert main(["train", "--preset", "tiny", "--arch", "autoencoder", "--out", str(tmp_path / "y")]) == 2
