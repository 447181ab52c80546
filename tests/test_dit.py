"""The DiT backbone (nn/dit.py): adaLN-Zero starts as the identity, shapes and patch sizes, the
null label, and the same trainer / checkpoint / sampling path as the U-Net."""
import json

import pytest
import torch

import diffusionlab as dl
from diffusionlab.apps.cli import main
from diffusionlab.core.cond import Cond
from diffusionlab.nn import NETWORKS, DiT, DiTConfig, Unet, build_network, dit_demo_model
from diffusionlab.nn.dit import DiTBlock
from diffusionlab.training.config import default_model

DIGITS = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]
SMALL = ["--arch", "dit", "--hidden", "32", "--depth", "2", "--heads", "2", "--patch-size", "2"]


def test_adaln_zero_blocks_start_as_the_identity_and_the_output_at_zero():
    blk = DiTBlock(32, 4, 4.0)
    x, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    assert torch.equal(blk(x, c), x)
    net = DiT(hidden=32, depth=2, heads=4, channels=1, num_classes=3)
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 500.0]), Cond(labels=torch.tensor([0, 2])))
    assert out.shape == (2, 1, 8, 8) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("patch,channels,learned", [(2, 1, False), (4, 3, False), (2, 3, True), (1, 1, False)])
def test_shapes_and_patch_sizes(patch, channels, learned):
    net = DiT(hidden=32, depth=1, heads=2, patch_size=patch, channels=channels, learned_variance=learned)
    for p in net.parameters():  # leave the zero start to see the shapes carry information
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, channels, 16, 12)
    out = net(x, torch.tensor([1.0, 2.0]), Cond())
    assert out.shape == (2, channels * (2 if learned else 1), 16, 12) and out.abs().sum() > 0
    assert net.out_channels == channels * (2 if learned else 1)
    with pytest.raises(ValueError, match="divide by the patch size"):
        DiT(hidden=32, depth=1, heads=2, patch_size=4)(torch.randn(1, 3, 10, 10), torch.zeros(1))


def test_the_null_label_is_the_learned_extra_row():
    net = DiT(hidden=32, depth=1, heads=2, channels=1, num_classes=3)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 10.0])
    dropped = net(x, t, Cond(labels=torch.tensor([0, 1]), null=torch.tensor([True, True])))
    assert torch.allclose(dropped, net(x, t, Cond(labels=torch.tensor([3, 3]))))
    assert not torch.allclose(dropped, net(x, t, Cond(labels=torch.tensor([0, 1]))))
    with pytest.raises(ValueError, match="class labels"):
        DiT(hidden=32, depth=1, heads=2, channels=1)(x, t, Cond(labels=torch.tensor([0, 1])))


def test_the_cpu_preset_matches_the_demo_unet():
    dit = build_network("dit", dit_demo_model())
    unet = Unet.from_config(default_model())
    n_dit, n_unet = (sum(p.numel() for p in m.parameters()) for m in (dit, unet))
    assert abs(n_dit / n_unet - 1) < 0.15, (n_dit, n_unet)   # 4.9 M against 4.58 M
    assert NETWORKS["dit"] is DiT and DiTConfig.from_dict(dit.config) == dit_demo_model()


def test_train_resume_load_and_sample_a_dit(tmp_path):
    run = tmp_path / "dit"
    assert main(["train", *DIGITS, *SMALL, "--steps", "2", "--checkpoint-every", "2", "--out", str(run)]) == 0
    cfg = json.loads((run / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert cfg["network"]["arch"] == "dit" and cfg["network"]["config"]["hidden"] == 32
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    den = dl.load_denoiser(run)
    assert isinstance(den.net, DiT)
    x = dl.sample(den, (2, 1, 8, 8), sampler="ddim", steps=3, seed=0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_a_class_conditional_dit_with_guidance(tmp_path):
    run = tmp_path / "cdit"
    assert main(["train", *DIGITS, *SMALL, "--cond", "class", "--steps", "2", "--out", str(run)]) == 0
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "3", "--class", "4", "--guidance", "3",
                 "--out", str(tmp_path / "s.png")]) == 0


def test_network_flags_of_the_other_backbone_are_refused(tmp_path, capsys):
    assert main(["train", *DIGITS, "--arch", "dit", "--dim", "16", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "--dim sets the unet network" in capsys.readouterr().err
    assert main(["train", *DIGITS, "--hidden", "16", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert main(["train", *DIGITS, "--arch", "vit", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "unknown --arch" in capsys.readouterr().err
