"""The command line end to end, and its error messages."""
import json

import numpy as np
import pytest
from PIL import Image

from diffusionlab.apps.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--preset", "tiny", "--out", str(out), "--steps", "3", "--no-progress"])
    assert rc == 0
    return out


def test_train_writes_a_loadable_run(run_dir):
    assert (run_dir / "checkpoints" / "latest").is_file()
    assert json.loads((run_dir / "run.json").read_text())["summary"]["steps"] == 3


def test_resume_continues(run_dir, tmp_path):
    import shutil
    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    assert main(["train", "--preset", "tiny", "--out", str(d), "--steps", "5", "--resume", "--no-progress"]) == 0
    assert json.loads((d / "run.json").read_text())["summary"]["steps"] == 5


def test_train_classifier_command_refuses_an_existing_run_resumes_and_guides_sampling(run_dir, tmp_path, capsys):
    cls = tmp_path / "cls"
    base = ["train-classifier", "--data", "digits", "--ckpt", str(run_dir), "--batch-size", "16", "--out", str(cls)]
    assert main([*base, "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    cfg = json.loads((cls / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert cfg["kind"] == "classifier" and cfg["format_version"] == 3 and cfg["image_size"] == [32, 32]
    assert (cls / "checkpoints" / "step-00000002" / "manifest.json").is_file()
    assert main([*base, "--steps", "1"]) == 2                      # an existing run, no --overwrite
    assert "already holds a training run" in capsys.readouterr().err
    assert main([*base, "--steps", "3", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    sample = ["sample", "--ckpt", str(run_dir), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]
    assert main([*sample, "--classifier", str(cls), "--class", "3"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(cls), "--n", "2", "--out", str(tmp_path / "t.png")]) == 2
    assert "noise-aware classifier" in capsys.readouterr().err


@pytest.mark.parametrize("sampler,extra", [("ddim", ["--eta", "0.5"]), ("ddpm", ["--variance", "large"]),
                                           ("ddim", ["--schedule", "karras"]),
                                           ("unipc", ["--schedule", "tuned", "--opt", "order=2", "--opt", "variant=bh1"]),
                                           ("heun", ["--schedule", "karras", "--sigma-max", "20", "--opt", "s_churn=10"])])
def test_sample_writes_grid_gif_and_npy(run_dir, tmp_path, sampler, extra):
    out = tmp_path / "s.png"
    rc = main(["sample", "--ckpt", str(run_dir), "--n", "5", "--steps", "4", "--sampler", sampler,
               "--out", str(out), "--gif", str(tmp_path / "d.gif"), "--npy", str(tmp_path / "x.npy"), *extra])
    assert rc == 0 and out.is_file() and (tmp_path / "d.gif").is_file()
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (5, 1, 32, 32)


def test_noise_strip(tmp_path):
    assert main(["noise", "--image", "mnist", "--size", "32", "--out", str(tmp_path / "n.png")]) == 0
    assert main(["noise", "--image", "cat", "--size", "64", "--t", "0,100,199", "--out", str(tmp_path / "c.png")]) == 0
    img = Image.open(tmp_path / "c.png")
    assert img.size[0] > img.size[1]


def test_eval_on_images(tmp_path, capsys):
    from diffusionlab.data import load_mnist
    np.save(tmp_path / "real.npy", load_mnist("heldout")[:200].numpy())
    assert main(["eval", "--images", str(tmp_path / "real.npy"), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["confident_fraction"] > 0.8 and m["n"] == 200
    # feature metrics with their real-vs-real floors: real held-out digits score like the floor
    for k in ("kid", "precision", "recall", "density", "coverage"):
        assert k in m and k + "_floor" in m
    assert m["feature_fd"] < 2 * m["fd_floor"] + 1 and m["precision"] > 0.5 and m["recall"] > 0.5
    assert "not comparable with the literature" in capsys.readouterr().out


def test_eval_reads_npz_and_image_folders(tmp_path, capsys):
    from diffusionlab.data import load_mnist
    x = load_mnist("heldout", 28)[:60]
    np.savez(tmp_path / "s.npz", images=x.numpy())
    assert main(["eval", "--images", str(tmp_path / "s.npz"), "--metrics", "fd,pr", "--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert "precision" in a and "kid" not in a and "density" not in a
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(x[:30]):
        Image.fromarray(((img[0].numpy() + 1) * 127.5).round().astype(np.uint8), mode="L").save(folder / f"{i}.png")
    assert main(["eval", "--images", str(folder), "--image-size", "28", "--metrics", "fd",
                 "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["n"] == 30


def test_samplers_lists_registry(capsys):
    from diffusionlab.core.samplers import SAMPLERS
    assert main(["samplers", "-v"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SAMPLERS) and "knobs: order=3, variant='bh2'" in out


@pytest.mark.parametrize("argv,msg", [
    (["train", "--preset", "tiny", "--data", "/no/such/folder"], "neither an embedded dataset"),
    (["sample", "--ckpt", "/no/such/run"], "no such checkpoint"),
    (["sample", "--ckpt", "RUN", "--sampler", "nope"], "argument --sampler: invalid choice: 'nope'"),
    (["sample", "--ckpt", "RUN", "--eta", "0.5", "--sampler", "ddpm"], "--eta applies"),
    (["sample", "--ckpt", "RUN", "--sampler", "unipc", "--opt", "foo=1"], "has no knob"),
    (["sample", "--ckpt", "RUN", "--sampler", "unipc", "--opt", "order"], "KEY=VALUE"),
    (["sample", "--ckpt", "RUN", "--n", "0"], "--n must be at least 1"),
    (["noise", "--image", "/no/such.png"], "--image: no such image"),
    (["noise", "--t", "0,5000"], "outside"),
    (["eval"], "exactly one of"),
    (["eval", "--images", "/no/such.npy"], "--images: no such file or folder"),
    (["eval", "--ckpt", "RUN", "--n", "4", "--extractor", "inception", "--inception-weights", "/no/w.pth"],
     "pytorch-fid/releases"),
    (["eval", "--ckpt", "RUN", "--n", "8", "--metrics", "fd,bogus"], "--metrics: unknown metrics"),
    (["eval", "--ckpt", "RUN", "--nll", "vlb", "--variance", "learned"], "needs a learned-variance model"),
    (["eval", "--ckpt", "RUN", "--nll", "ode", "--probes", "0"], "--probes must be"),
    (["sample", "--ckpt", "RUN", "--autoguidance", "2"], "no guide snapshot"),
    (["sample", "--ckpt", "RUN", "--guide", "RUN"], "only used with --autoguidance"),
    (["sample", "--ckpt", "RUN", "--autoguidance", "-1", "--guide", "RUN"], "finite number >= 0"),
    (["train", "--preset", "tiny", "--guide-at", "0"], "guide_at"),
    (["train", "--preset", "tiny", "--process", "vp", "--learned-variance"], "applies to --process ddpm"),
    (["train", "--preset", "tiny", "--strict-resume"], "--strict-resume applies to --resume"),
    (["train", "--preset", "tiny", "--arch", "dit", "--dim", "16"], "--dim sets the unet network, not --arch dit"),
    (["train", "--preset", "tiny", "--loss-kind", "hybrid"], "needs learned_variance"),
])
def test_user_errors_are_one_line_with_a_hint(argv, msg, capsys, run_dir):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-2].startswith(f"diffusionlab {argv[0]}: error: ") and msg in lines[-2], err
    assert lines[-1].startswith("hint: ") and "<command>" not in lines[-1] and "Traceback" not in err


def test_file_given_as_data_folder(tmp_path, capsys):
    f = tmp_path / "img.png"
    Image.new("RGB", (40, 40)).save(f)
    assert main(["train", "--preset", "tiny", "--data", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("nll,extra", [("vlb", ["--vlb-t", "5"]), ("vlb", []),
                                       ("ode", ["--rtol", "1e-3", "--atol", "1e-3"])])
def test_eval_nll_reports_bits_per_dim(run_dir, tmp_path, capsys, nll, extra):
    out = tmp_path / "nll.json"
    assert main(["eval", "--ckpt", str(run_dir), "--nll", nll, "--n", "3", "--json", str(out), *extra]) == 0
    m = json.loads(out.read_text())
    assert m["nll"] == nll and m["n"] == 3 and m["data"] == "mnist" and m["dims"] == 32 * 32
    assert np.isfinite(m["bits_per_dim"]) and m["bits_per_dim"] > 0 and m["stderr"] > 0
    if nll == "vlb":
        assert m["T"] == 100 and m["t_samples"] == (5 if extra else 100)
    assert "bits/dim =" in capsys.readouterr().out


def test_train_learned_variance_hybrid_and_sample_with_it(tmp_path):
    out = tmp_path / "lv"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--steps", "3", "--no-progress",
                 "--learned-variance", "--t-sampling", "importance"]) == 0
    cfg = json.loads((out / "run.json").read_text())["config"]
    assert cfg["model"]["learned_variance"] and cfg["diffusion"]["loss_kind"] == "hybrid"
    assert cfg["diffusion"]["t_sampling"] == "importance"
    assert main(["sample", "--ckpt", str(out), "--sampler", "ddpm", "--steps", "4", "--n", "2",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert main(["eval", "--ckpt", str(out), "--nll", "vlb", "--n", "2", "--vlb-t", "4"]) == 0


def _loaded(run_dir, *flags):
    from diffusionlab.apps.cli import build_parser, load

    args = build_parser().parse_args(["sample", "--ckpt", str(run_dir), "--precision", "fp32", *flags])
    before = dict(vars(args))
    m = load(args)
    assert vars(args) == before  # the parsed flags are never modified
    return m


@pytest.mark.parametrize("kind", ["clip", "dynamic"])
def test_sample_threshold_bounds_the_denoised_prediction(run_dir, kind):
    """--threshold reaches the denoiser the sampler calls: at small sigma a far-out-of-range x gives
    an x0 prediction far outside [-1, 1], which clip / dynamic thresholding bring back into it."""
    import torch

    x = 4 * torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((3,), 0.05)
    with torch.no_grad():
        raw = _loaded(run_dir).den(x, sigma)
        bounded = _loaded(run_dir, "--threshold", kind).den(x, sigma)
    assert raw.abs().max() > 2                                   # the test input does leave the range
    assert bounded.abs().max() <= 1 + 1e-5
    if kind == "clip":
        torch.testing.assert_close(bounded, raw.clamp(-1, 1))


def test_load_takes_sampler_and_steps_from_sampling_defaults(run_dir):
    from diffusionlab.core.sampling import sampling_defaults

    m = _loaded(run_dir)
    assert m.choice == sampling_defaults(m.den, None, None, None)
    c = _loaded(run_dir, "--sampler", "heun", "--steps", "7").choice
    assert (c.sampler, c.steps) == ("heun", 7)


def test_train_with_guide_snapshot_and_sample_with_autoguidance(tmp_path, run_dir):
    """--autoguidance W gives guide + W (model - guide), the guide being the run's own snapshot
    (train --guide-at) or another checkpoint (--guide)."""
    import torch

    from diffusionlab.models.loading import load_denoiser

    out = tmp_path / "ag"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--steps", "4", "--guide-at", "0.5",
                 "--no-progress"]) == 0
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((2,), 1.5)
    model = load_denoiser(out)
    for extra, guide in (([], load_denoiser(out, weights="guide")), (["--guide", str(run_dir)], load_denoiser(run_dir))):
        with torch.no_grad():
            got = _loaded(out, "--autoguidance", "2", *extra).den(x, sigma)
            want = guide(x, sigma) + 2 * (model(x, sigma) - guide(x, sigma))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - model(x, sigma)).abs().max() > 1e-4         # the guide changes the prediction
    assert main(["sample", "--ckpt", str(out), "--n", "2", "--steps", "2", "--sampler", "ddpm", "--autoguidance", "2",
                 "--out", str(tmp_path / "s.png")]) == 0
