"""`diffusionlab export`: diffusers folders out (a --layout diffusers U-Net) and ONNX out.

One tiny class-conditional run per layout (module fixtures, a few seconds each). diffusers
out: the exported folder loads back (ours) to the same predictions and samples; diffusers' own
DDPMPipeline / DDIM loop on it is checked under ``-m interop``. ONNX out: onnxruntime equals
PyTorch on random inputs (tolerance ``models.export.ONNX_TOL``), and docs/onnx_sample.py - the
README's onnxruntime-only script - equals our DDIM with CFG from the same noise.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusionlab as dl
from diffusionlab.apps.cli import main
from diffusionlab.core.cfg import ClassifierFree
from diffusionlab.core.cond import Cond
from diffusionlab.models.loading import load_denoiser

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
RUN = ["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress",
       "--cond", "class", "--steps", "2"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    assert main([*RUN, "--out", str(root / "native")]) == 0
    out = {"native": root / "native", "root": root}
    if importlib.util.find_spec("diffusers"):
        assert main([*RUN, "--layout", "diffusers", "--out", str(root / "dlayout")]) == 0
        out["dlayout"] = root / "dlayout"
    return out


def _same_predictions(a, b, cond, tol=1e-6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g) * 3
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    with torch.no_grad():
        return float((a(x, sigma, cond) - b(x, sigma, cond)).abs().max()) <= tol


def test_diffusers_layout_exports_and_loads_back(runs, tmp_path):
    pytest.importorskip("diffusers")
    folder = tmp_path / "exported"
    assert main(["export", "--ckpt", str(runs["dlayout"]), "--format", "diffusers", "--out", str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} == {"unet", "scheduler", "model_index.json", "diffusionlab.json"}
    assert list((folder / "unet").glob("*.safetensors"))
    ours, back = load_denoiser(runs["dlayout"]), load_denoiser(folder)
    assert back.info.cond.num_classes == 10 and back.info.cond.class_names == ours.info.cond.class_names
    assert (back.info.default_sampler, back.info.default_steps) == (ours.info.default_sampler, ours.info.default_steps)
    labels = Cond(labels=torch.tensor([0, 3, 7, 9]))
    assert _same_predictions(ours, back, labels)
    guided = lambda d: ClassifierFree(d, 3.0)  # noqa: E731  the null label survives the export
    assert _same_predictions(guided(ours), guided(back), labels)
    # the CLI samples the folder like a run, guidance included; an existing folder is kept
    assert main(["sample", "--ckpt", str(folder), "--n", "2", "--class", "4", "--guidance", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert main(["export", "--ckpt", str(runs["dlayout"]), "--format", "diffusers", "--out", str(folder)]) == 2
    # eval on the folder: the likelihood of the held-out split of the data the run recorded (digits)
    assert main(["eval", "--ckpt", str(folder), "--nll", "vlb", "--n", "4", "--vlb-t", "10"]) == 0


def test_what_does_not_map_is_refused(runs, tmp_path, capsys):
    assert main(["export", "--ckpt", str(runs["native"]), "--format", "diffusers", "--out", str(tmp_path / "x")]) == 2
    assert "--layout diffusers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main([*RUN, "--layout", "diffusers", "--patch-size", "2", "--out", str(tmp_path / "p")]) == 2
    assert "patch_size" in capsys.readouterr().err


def test_onnx_equals_pytorch_and_the_readme_script_samples(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    assert main(["export", "--ckpt", str(runs["native"]), "--format", "onnx", "--out", str(path)]) == 0
    side = json.loads((tmp_path / "model.onnx.json").read_text())
    assert side["check"]["ok"] and side["check"]["max_abs_diff"] <= 1e-4 * max(1, side["check"]["max_abs_output"])
    assert side["inputs"] == ["x_in", "c_noise", "labels", "null"]
    # the onnxruntime-only script (README "ONNX out") equals our DDIM + CFG on the same grid and noise
    spec = importlib.util.spec_from_file_location("onnx_sample", ROOT / "docs" / "onnx_sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    noise = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    got = script.sample(str(path), label=5, guidance=2.5, noise=noise)
    den = load_denoiser(runs["native"])
    ours = dl.sample(ClassifierFree(den, 2.5), (3, 1, 8, 8), sampler="ddim", sigmas=side["grid"]["sigmas"],
                     noise=torch.from_numpy(noise), cond=Cond(labels=torch.full((3,), 5))).clamp(-1, 1)
    assert np.abs(got - ours.numpy()).max() < 1e-4
    assert main(["export", "--ckpt", str(runs["native"]), "--format", "onnx", "--out", str(path)]) == 2  # kept


def test_readme_carries_the_onnx_script():
    """The README's copy of docs/onnx_sample.py is the tested one."""
    readme = (ROOT / "README.md").read_text()
    body = (ROOT / "docs" / "onnx_sample.py").read_text()
    assert body.strip() in readme


@pytest.mark.interop
def test_diffusers_runs_the_export_with_its_own_loop_and_pipeline(runs, tmp_path):
    """diffusers' DDIM loop (class labels) and DDPMPipeline (unconditional) on exported folders
    equal our DDIM on the runs from the same noise."""
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path / "class"
    assert main(["export", "--ckpt", str(runs["dlayout"]), "--format", "diffusers", "--out", str(folder)]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    sched = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 9])
    sched.set_timesteps(5)
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample
    ours = dl.sample(load_denoiser(runs["dlayout"]), (2, 1, 8, 8), sampler="ddim", steps=5, schedule="trailing",
                     noise=noise, cond=Cond(labels=labels))
    assert float((ours - x).abs().max()) < 1e-4
    plain = runs["root"] / "plain"
    assert main([*RUN[:-4], "--steps", "2", "--layout", "diffusers", "--out", str(plain)]) == 0
    assert main(["export", "--ckpt", str(plain), "--format", "diffusers", "--out", str(tmp_path / "plain")]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "plain")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = dl.sample(load_denoiser(plain), (2, 1, 8, 8), sampler="ddim", steps=5, schedule="trailing", noise=noise)
    ours = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(images - ours).max() < 1e-4


def _random_net(**kw):
    from diffusionlab.nn import Unet

    net = Unet(dim=8, dim_mults=(1, 2), channels=1, mid_attn=True, groups=4, **kw).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (the final conv starts at zero)
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


ONNX_NETS = {"class": dict(num_classes=10), "minilm text": dict(text_dim=12, text_encoder="minilm"),
             "small text": dict(text_dim=16, text_encoder="small"), "image": dict(cond_channels=1),
             "none": {}}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=() if k == "class" else pytest.mark.slow)
                                  for k in ONNX_NETS])
def test_onnx_runtime_equals_pytorch_on_random_weights(kind, tmp_path):
    """Random weights (outputs of order 1, unlike a just-initialised run's ~0.01), another batch size
    and token length than the export's, null rows included."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from diffusionlab.models.export import check_onnx, write_onnx

    net = _random_net(**ONNX_NETS[kind])
    write_onnx(net, net.cond_spec, (1, 8, 8), tmp_path / "n.onnx")
    check = check_onnx(tmp_path / "n.onnx", net, net.cond_spec, (1, 8, 8), batch=3)
    assert check["ok"] and check["max_abs_output"] > 0.1, check
