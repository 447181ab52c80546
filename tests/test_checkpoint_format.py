"""Checkpoint format 2 (only dataclass dicts) and the migration of format 1; one config per
network; the CLI's explicit default preset builds the model it always built."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusionlab as dl
from diffusionlab.models.checkpoint import FORMAT_VERSION, read_config
from diffusionlab.apps.cli import main
from diffusionlab.nn import NETWORKS, Unet, UnetConfig, build_network
from diffusionlab.models.processes import DiffusionConfig

FIXTURES = Path(__file__).parent / "fixtures"
DIGITS = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("name,process", [("format1_nomanifest", "ddpm"), ("format1_edm", "edm")])
def test_format1_fixtures_load_and_sample_the_same_images(name, process, tmp_path):
    """Written by the code before the unification (tests/fixtures/make_fixture.py): one from
    before checkpoint manifests existed (ddpm), one with a manifest (edm)."""
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / name / "checkpoint", ckpt)  # loading must not need to write
    cfg = read_config(ckpt)
    assert cfg["format_version"] == 3 and cfg["migrated_from"] == 1 and cfg["diffusion"]["process"] == process
    den = dl.load_denoiser(ckpt)
    assert den.info.process == process and den.info.image_shape == (1, 8, 8)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    grid = {"ddpm": "trailing", "edm": "karras"}[process]  # 'auto' when the fixture was made (before issue 23)
    x = dl.sample(den, (4, 1, 8, 8), sampler="ddim", steps=4, generator=gens, schedule=grid)
    expected = torch.from_numpy(np.load(FIXTURES / name / "expected_ddim4_seed100.npy"))
    assert torch.allclose(x, expected, atol=1e-5, rtol=1e-5), (x - expected).abs().max()


def test_format2_fixture_loads_and_samples_the_same_images(tmp_path):
    """A class-conditional checkpoint written by the code before format 3
    (tests/fixtures/make_fixture.py format2_class): it loads with its conditioning and sampling record and
    samples the same images for the same labels and seeds."""
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / "format2_class" / "checkpoint", ckpt)
    cfg = read_config(ckpt)
    assert cfg["format_version"] == 3 and cfg["migrated_from"] == 2
    den = dl.load_denoiser(ckpt)
    info = den.info
    assert (info.cond.kind, info.cond.num_classes, info.default_sampler, info.default_steps, info.default_guidance) == \
        ("class", 10, "ddpm", 4, 2.0)
    assert info.cond.class_names == tuple(str(k) for k in range(10))
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    x = dl.sample(den, (4, 1, 8, 8), sampler="ddim", steps=4, generator=gens, schedule="trailing",  # its 'auto' then
                  cond=dl.Cond(labels=torch.tensor([0, 3, 5, 9])))
    expected = torch.from_numpy(np.load(FIXTURES / "format2_class" / "expected_ddim4_seed100.npy"))
    assert torch.allclose(x, expected, atol=1e-5, rtol=1e-5), (x - expected).abs().max()
    assert main(["sample", "--ckpt", str(ckpt), "--class", "3", "--n", "2", "--out", str(tmp_path / "s.png")]) == 0


def test_format2_edm_drops_the_sampler_it_never_applied():
    """Format 2 EDM / NCSN checkpoints recorded a sampler their loader never applied: migrated,
    they sample with their own as before; the guidance scale stays."""
    from diffusionlab.models.checkpoint import migrate_config

    cfg = {"format_version": 2, "diffusion": {"process": "edm"}, "sampling": {"sampler": "ddpm", "steps": 50, "guidance": 3.0}}
    assert migrate_config(cfg)["sampling"] == {"guidance": 3.0}
    cfg["diffusion"]["process"] = "ddpm"
    assert migrate_config(cfg)["sampling"] == {"sampler": "ddpm", "steps": 50, "guidance": 3.0}


def test_new_checkpoints_store_only_dataclass_dicts(tmp_path):
    assert main(["train", *DIGITS, "--steps", "1", "--out", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "checkpoints" / "step-00000001" / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION == 3 and set(cfg["sampling"]) == {"sampler", "steps", "guidance"}
    assert set(cfg) >= {"network", "diffusion", "image_size", "train"} and "model" not in cfg
    net_cfg = UnetConfig.from_dict(cfg["network"]["config"])
    assert json.loads(json.dumps(dataclasses.asdict(net_cfg))) == cfg["network"]["config"]
    assert json.loads(json.dumps(dataclasses.asdict(DiffusionConfig.from_dict(cfg["diffusion"])))) == cfg["diffusion"]


def test_every_network_has_its_config_beside_it():
    for arch, cls in NETWORKS.items():
        cfg = cls.Config()
        net = build_network(arch, cfg)
        assert isinstance(net, cls) and cls.Config.from_dict(json.loads(json.dumps(net.config))) is not None
    assert Unet().config["dim_mults"] == [1, 2, 4, 8] and Unet().channels == 3  # the seed API's defaults
    with pytest.raises(TypeError):
        Unet(dimension=3)
    with pytest.raises(ValueError, match="unknown UnetConfig fields"):
        UnetConfig.from_dict({"dimm": 3})


def test_the_cli_default_preset_builds_the_model_it_always_built(tmp_path):
    """``train --data digits --dim 16 --dim-mults 1,2 --learned-variance`` before the refactor:
    this network config and 222,824 parameters (measured on the previous code)."""
    assert main(["train", "--data", "digits", "--image-size", "8", "--dim", "16", "--dim-mults", "1,2",
                 "--learned-variance", "--steps", "1", "--threads", "1", "--no-progress", "--precision", "fp32",
                 "--batch-size", "8", "--val-every", "0", "--sample-every", "0", "--out", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "checkpoints" / "step-00000001" / "config.json").read_text())
    assert cfg["network"]["config"] == {
        "dim": 16, "dim_mults": [1, 2], "channels": 1, "out_channels": None, "num_res_blocks": 1, "block": "resnet",
        "full_attn": [False, True], "linear_attn": [False, False], "mid_attn": True, "attn_heads": 4,
        "attn_dim_head": 32, "dropout": 0.0, "groups": 8, "learned_sinusoidal": False, "learned_sinusoidal_dim": 16,
        "num_classes": None, "cond_dim": None, "learned_variance": True, "patch_size": 2,
        "text_dim": None, "text_encoder": None,    # added by text conditioning (issue 16), off by default
        "cond_channels": 0,                        # added by image conditioning (issue 17), off by default
        "guidance_input": False,                   # added by guidance distillation (issue 28), off by default
        "layout": "native"}                        # added by the diffusers layout (issue 31), native by default
    assert cfg["diffusion"]["loss_kind"] == "hybrid"
    den = dl.load_denoiser(tmp_path)
    assert sum(p.numel() for p in den.net.parameters()) == 222_824 and den.info.learned_variance


def test_process_settings_are_validated_in_one_place():
    from diffusionlab.models.processes import validate

    with pytest.raises(ValueError, match="min_snr_gamma applies to process ddpm"):
        validate(DiffusionConfig(process="vp", min_snr_gamma=5.0))
    with pytest.raises(ValueError, match="beta_min applies to process vp / subvp"):
        validate(DiffusionConfig(process="ddpm", beta_min=0.2))
    with pytest.raises(ValueError, match="unknown process"):
        validate(DiffusionConfig(process="vdm"))
    validate(DiffusionConfig(process="edm", sigma_data=0.6))
