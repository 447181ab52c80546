"""Latent diffusion models: trained on an autoencoder's latents by the one trainer, sampled to
pixels, and bound to their autoencoder by its content hash (a missing or changed one is refused
with the --autoencoder hint; a moved copy is accepted)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diffusionlab.apps.cli import main
from diffusionlab.models import latent as latent_mod
from diffusionlab.models.latent import LatentCodec, to_pixels
from diffusionlab.models.loading import load_denoiser
from diffusionlab.training import Trainer, tiny_config

SMALL = ["--data", "digits", "--image-size", "8"]


class _Identity(torch.nn.Module):
    """An autoencoder that is the identity: posterior mean x, zero variance (log-variance -inf)."""

    latent_channels = 1

    def encode(self, x):
        return x.clone(), torch.full_like(x, -float("inf"))

    def decode(self, z):
        return z.clone()

    def latent_shape(self, shape):
        return tuple(shape)


def test_with_the_identity_autoencoder_the_latent_path_is_the_pixel_path(tmp_path, monkeypatch):
    ident = LatentCodec(_Identity(), [0.0], [1.0], (1, 8, 8), "identity", "0" * 64)
    monkeypatch.setattr(latent_mod, "load_autoencoder", lambda path, weights="ema": ident)
    cfg = dict(data="digits", image_size=8, seed=3)
    pixel = Trainer(config=tiny_config(out_dir=str(tmp_path / "p"), **cfg))
    latent = Trainer(config=tiny_config(out_dir=str(tmp_path / "l"), latent="identity", **cfg))
    assert latent.model_shape == (1, 8, 8) and latent.train_std is not None
    torch.testing.assert_close(latent.batch(5).x, pixel.batch(5).x, rtol=0, atol=0)   # z = mean + 0 n = x
    pixel.train()
    latent.train()
    for (k, a), b in zip(pixel.model.state_dict().items(), latent.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    rec = json.loads((tmp_path / "l" / "checkpoints" / "step-00000004" / "config.json").read_text())["latent"]
    assert rec["sha256"] == "0" * 64 and rec["latent_shape"] == [1, 8, 8]
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(to_pixels(type("I", (), {"latent": ident})(), x), x.clamp(-1, 1))


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    assert main(["train-autoencoder", "--out", str(root / "ae"), "--dim", "8", "--steps", "2", "--batch-size", "8",
                 "--no-progress", *SMALL]) == 0
    assert main(["train", "--preset", "tiny", *SMALL, "--latent", str(root / "ae"), "--cond", "class",
                 "--out", str(root / "lat"), "--no-progress"]) == 0
    return root


def test_a_latent_model_samples_pixels_and_records_its_autoencoder(latent_runs, tmp_path):
    root = latent_runs
    rec = json.loads((root / "lat" / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert rec["latent"]["autoencoder"] == "../ae/checkpoints/step-00000002" and not rec["latent"]["embedded"]
    assert rec["latent"]["pixel_shape"] == [1, 8, 8] and rec["latent"]["latent_shape"] == [4, 4, 4]
    den = load_denoiser(root / "lat")
    assert den.info.image_shape == (4, 4, 4) and den.info.latent.pixel_shape == (1, 8, 8)
    npy = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(root / "lat"), "--n", "3", "--class", "2", "--out", str(tmp_path / "s.png"),
                 "--npy", str(npy), "--gif", str(tmp_path / "s.gif")]) == 0
    x = np.load(npy)
    assert x.shape == (3, 1, 8, 8) and np.abs(x).max() <= 1 and (tmp_path / "s.gif").is_file()


def test_a_missing_or_changed_autoencoder_is_refused_and_a_moved_copy_accepted(latent_runs, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(latent_runs, root)
    args = ["sample", "--ckpt", str(root / "lat"), "--n", "2", "--out", str(tmp_path / "s.png")]
    shutil.move(root / "ae", root / "ae-moved")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "autoencoder is missing" in err and "--autoencoder PATH" in err
    assert main([*args, "--autoencoder", str(root / "ae-moved")]) == 0
    # another autoencoder at the recorded place: its hash differs
    assert main(["train-autoencoder", "--out", str(root / "ae"), "--dim", "8", "--steps", "2", "--batch-size", "8",
                 "--seed", "1", "--no-progress", *SMALL]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not the one this model was trained on" in err and "recorded" in err
    assert main(["sample", "--ckpt", str(root / "ae-moved"), "--n", "1", "--out", str(tmp_path / "x.png")]) == 2


def test_embedding_the_autoencoder_keeps_the_model_whole(latent_runs, tmp_path):
    out = tmp_path / "emb"
    assert main(["train", "--preset", "tiny", *SMALL, "--latent", str(latent_runs / "ae"), "--embed-autoencoder",
                 "--out", str(out), "--no-progress"]) == 0
    rec = json.loads((out / "checkpoints" / "step-00000004" / "config.json").read_text())["latent"]
    assert rec["embedded"] and rec["autoencoder"] == "autoencoder" and (out / "autoencoder" / "config.json").is_file()
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)
    assert load_denoiser(moved).info.latent.latent_shape == (4, 4, 4)


def test_latent_runs_refuse_what_cannot_apply(latent_runs, tmp_path):
    base = ["train", "--preset", "tiny", *SMALL, "--latent", str(latent_runs / "ae"), "--no-progress"]
    assert main([*base, "--hflip", "--out", str(tmp_path / "a")]) == 2
    assert main(["train", "--preset", "tiny", "--latent", str(latent_runs / "ae"), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2                                        # 32 px data, an 8 px autoencoder
    assert main([*base[:-1], "--latent", str(latent_runs / "lat"), "--out", str(tmp_path / "c")]) == 2


def test_latent_models_go_through_the_pipelines_eval_and_the_page(latent_runs, tmp_path):
    from fastapi.testclient import TestClient

    from diffusionlab.apps.serve.api import create_app

    root = latent_runs
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for cmd in (["img2img", "--strength", "0.6"], ["inpaint", "--mask", "right"]):
        out = tmp_path / f"{cmd[0]}.npy"
        assert main([cmd[0], "--ckpt", str(root / "lat"), "--input", str(tmp_path / "x.npy"), *cmd[1:], "--class", "1",
                     "--npy", str(out), "--out", str(tmp_path / f"{cmd[0]}.png")]) == 0
        y = np.load(out)
        assert y.shape == x.shape
    np.testing.assert_array_equal(y[..., :4], x[..., :4])       # latent inpainting keeps the known pixels exactly
    assert np.abs(y[..., 4:] - x[..., 4:]).max() > 1e-3
    from diffusionlab.apps.cli import build_parser
    from diffusionlab.apps.cli.eval import _samples

    drawn, _ = _samples(build_parser().parse_args(["eval", "--ckpt", str(root / "lat"), "--n", "5", "--steps", "2"]))
    assert drawn.shape == (5, 1, 8, 8) and drawn.abs().max() <= 1                 # measured as decoded pixels
    assert main(["eval", "--ckpt", str(root / "lat"), "--nll", "ode", "--n", "4", "--rtol", "1e-2", "--atol", "1e-2"]) == 0
    assert main(["eval", "--ckpt", str(root / "lat"), "--nll", "vlb", "--n", "4"]) == 2        # pixels' decoder term
    with TestClient(create_app(root)) as c:
        listed = c.get("/api/checkpoints").json()
        assert [e["id"] for e in listed] == ["lat"]                                # the autoencoder is not listed
        assert listed[0]["image_shape"] == [1, 8, 8] and listed[0]["latent"]["latent_shape"] == [4, 4, 4]
        stages = [st["name"] for st in c.get("/api/model", params={"checkpoint": "lat"}).json()["stages"]]
        assert stages[-2:] == ["decoder (autoencoder)", "image"]
        r = c.post("/api/generate", json={"checkpoint": "lat", "class": 3, "batch": 2, "steps": 3})
        assert r.status_code == 202
        with c.stream("GET", r.json()["events"]) as s:
            names = [line[7:] for line in s.iter_lines() if line.startswith("event: ")]
        assert names[-1] == "done" and names.count("step") == 3
        assert c.post("/api/guidance", json={"job": r.json()["job"], "step": 1}).json()["decoded"]
        r = c.post("/api/inpaint", json={"checkpoint": "lat", "image": {"digit": 1}, "mask": "left", "steps": 3})
        assert r.status_code == 202, r.text
        with c.stream("GET", r.json()["events"]) as s:
            assert [line for line in s.iter_lines() if line.startswith("event: ")][-1] == "event: done"


def test_the_network_is_fitted_to_small_latent_grids(tmp_path, capsys):
    ae = tmp_path / "ae8"
    assert main(["train-autoencoder", "--out", str(ae), "--f", "8", "--latent-channels", "2", "--dim", "8",
                 "--steps", "1", "--batch-size", "8", "--no-progress", "--data", "digits", "--image-size", "32"]) == 0
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--data", "digits", "--image-size", "32", "--latent", str(ae),
                 "--patch-size", "2", "--dim-mults", "1,2,2", "--steps", "1", "--out", str(tmp_path / "m"),
                 "--no-progress"]) == 0
    assert "latent grid 4x4" in capsys.readouterr().err
    den = load_denoiser(tmp_path / "m")
    assert den.info.image_shape == (2, 4, 4) and den.net.patch_size * 2 ** (den.net.levels - 1) <= 4


def test_the_encoded_training_set_is_cached_and_a_damaged_cache_rebuilt(tmp_path, monkeypatch):
    from diffusionlab.training.latent_data import cache_key, encoded_sets

    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(tmp_path / "cache"))
    codec = LatentCodec(_Identity(), [0.5], [2.0], (1, 8, 8), "identity", "1" * 64)
    train, val = torch.rand(6, 1, 8, 8), torch.rand(3, 1, 8, 8)
    parts = {"data": "x", "image_size": 8}
    got = encoded_sets(codec, train, val, parts)
    torch.testing.assert_close(got["train_mean"], (train - 0.5) / 2.0)        # scaled posterior means
    assert float(got["train_std"].abs().max()) == 0.0
    path = tmp_path / "cache" / "latents" / f"{cache_key(codec, parts)}.safetensors"
    assert path.is_file()
    path.write_bytes(b"damaged")
    again = encoded_sets(codec, train, val, parts)
    torch.testing.assert_close(again["val_mean"], (val - 0.5) / 2.0)
    assert path.stat().st_size > 100                                         # rewritten


def test_a_latent_model_is_aligned_with_dpo_on_pixel_pairs(latent_runs, tmp_path):
    """DPO on a latent base: the pixel pairs are encoded once, chosen and rejected side by side on
    the latent channel axis; the adapter loads with --lora and samples pixels."""
    from diffusionlab.data.datasets import load_image_sets
    from diffusionlab.data.folder import export_pngs
    from diffusionlab.data.pairs import write_pairs

    tr, _ = load_image_sets("digits", 8, 1)
    pairs = tmp_path / "pairs"
    chosen = export_pngs(tr.images[tr.labels == 3][:6], pairs / "images", 0)
    rejected = export_pngs(tr.images[tr.labels == 5][:6], pairs / "images", 100)
    write_pairs(pairs, [{"chosen": c.relative_to(pairs).as_posix(), "rejected": r.relative_to(pairs).as_posix(),
                         "class": 3} for c, r in zip(chosen, rejected)])
    out = tmp_path / "dpo"
    assert main(["dpo", "--ckpt", str(latent_runs / "lat"), "--pairs", str(pairs), "--steps", "2",
                 "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_accuracy" in r for r in rec)
    den = load_denoiser(latent_runs / "lat", lora=[str(out)])
    x = torch.randn(2, *den.info.image_shape)
    assert torch.isfinite(to_pixels(den.info, den(x, torch.tensor([1.0, 1.0])))).all()
    assert main(["sample", "--ckpt", str(latent_runs / "lat"), "--lora", str(out), "--n", "2", "--steps", "2",
                 "--class", "3", "--out", str(tmp_path / "s.png")]) == 0
