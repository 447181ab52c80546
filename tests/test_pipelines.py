"""The pipelines (issue 17, first part): img2img (SDEdit) and inpainting (RePaint) over any
sampler, their inputs and masks, and the CLI commands on conditional and unconditional models."""
import numpy as np
import pytest
import torch

from diffusionlab.apps.cli import main
from diffusionlab.core.protocol import DenoiserInfo
from diffusionlab.core.samplers import SAMPLERS
from diffusionlab.pipelines.img2img import img2img
from diffusionlab.pipelines.inpaint import inpaint, parse_mask
from diffusionlab.pipelines.inputs import load_inputs

SHAPE = (1, 8, 8)


class GaussImages:
    """Images ~ N(mu, s^2 I): the exact denoiser mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    def __init__(self, s=0.3):
        self.mu = torch.linspace(-0.5, 0.5, 64).reshape(1, 1, 8, 8)
        self.s = s
        self.info = DenoiserInfo(sigma_min=0.01, sigma_max=40.0, image_shape=SHAPE)

    def __call__(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - self.mu)


def _inputs(n=4, value=0.9):
    return torch.full((n, *SHAPE), value) + 0.05 * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(3))


def test_img2img_strength_zero_returns_the_input_and_one_ignores_it():
    den, x = GaussImages(), _inputs()
    torch.testing.assert_close(img2img(den, x, 0.0, steps=10, sampler="ddim"), x, atol=0, rtol=0)
    a = img2img(den, x, 1.0, steps=10, sampler="euler_ancestral", seed=4)
    b = img2img(den, -x, 1.0, steps=10, sampler="euler_ancestral", seed=4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)                      # independent of the input
    mid = img2img(den, x, 0.4, steps=10, sampler="ddim", seed=4)
    # part of the way: pulled toward the data but still closer to its own input than a fresh sample is
    assert (mid - x).abs().mean() < (a - x).abs().mean() and (mid - x).abs().mean() > 1e-3


def test_img2img_runs_the_last_round_s_n_steps():
    from diffusionlab.core.sampling import CountingDenoiser

    den = CountingDenoiser(GaussImages())
    img2img(den, _inputs(2), 0.34, steps=10, sampler="euler")            # round(3.4) = 3 steps, Euler: 3 NFE
    assert den.nfe == 3
    with pytest.raises(ValueError, match=r"strength is in \[0, 1\]"):
        img2img(GaussImages(), _inputs(2), 1.5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_repaint_keeps_the_known_region_exactly_for_every_sampler(name):
    knobs = {"n_steps_each": 2} if name == "annealed_langevin" else {}
    den, x = GaussImages(), _inputs(3)
    m = parse_mask("right", SHAPE)
    out = inpaint(den, x, m, steps=4, sampler=name, seed=1, jump_length=2, resample=2, **knobs)
    keep = ~m.expand_as(out)
    assert torch.equal(out[keep], x[keep]) and torch.isfinite(out).all()
    assert (out[~keep] - x[~keep]).abs().max() > 1e-3


def test_repaint_fills_toward_the_data_and_resampling_costs_r_times():
    from diffusionlab.core.sampling import CountingDenoiser

    den = CountingDenoiser(GaussImages(s=0.05))
    x = _inputs(2)
    out = inpaint(den, x, parse_mask("left", SHAPE), steps=6, sampler="ddim", jump_length=3, resample=2)
    assert den.nfe == 6 + 3                                  # one jump back of 3 steps (the last segment runs once)
    fill = parse_mask("left", SHAPE).expand_as(out)
    torch.testing.assert_close(out[fill], GaussImages().mu.expand_as(out)[fill], atol=0.2, rtol=0)


def test_mask_parsing(tmp_path):
    from PIL import Image

    m = parse_mask("left", SHAPE)
    assert m.shape == (1, 1, 8, 8) and m[..., :4].all() and not m[..., 4:].any()
    assert parse_mask("bottom", SHAPE)[..., 4:, :].all() and not parse_mask("bottom", SHAPE)[..., :4, :].any()
    r = parse_mask("1,2,3,5", SHAPE)                                     # x0, y0, x1, y1 half-open, x = column
    assert r.sum() == 2 * 3 and r[0, 0, 2:5, 1:3].all()
    arr = np.zeros((8, 8), np.uint8)
    arr[:, 6:] = 255                                                     # white = fill
    Image.fromarray(arr).save(tmp_path / "m.png")
    p = parse_mask(str(tmp_path / "m.png"), SHAPE)
    assert p[..., 6:].all() and not p[..., :6].any()
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "bad.png")
    for spec, msg in ((str(tmp_path / "bad.png"), "this model takes 8x8"), ("0,0,9,2", "rectangle must satisfy"),
                      ("1,2,3", "four integers"), ("middle", "not left|right|top|bottom")):
        with pytest.raises(ValueError, match=msg):
            parse_mask(spec, SHAPE)


def test_inputs_npy_png_folder_padding_and_refusals(tmp_path):
    from PIL import Image

    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    t = load_inputs(tmp_path / "x.npy", (1, 32, 32))
    assert t.shape == (3, 1, 32, 32) and torch.equal(t[:, :, 2:30, 2:30], torch.from_numpy(x))
    assert (t[:, :, :2] == -1).all()                                    # padded black, like MNIST
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32), 255 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    f = load_inputs(tmp_path / "imgs", (1, 32, 32))
    assert f.shape == (2, 1, 32, 32) and f[0].max() == -1 and f[1].min() == 1
    assert load_inputs(tmp_path / "imgs" / "1.png", (1, 32, 32)).shape == (1, 1, 32, 32)
    np.save(tmp_path / "big.npy", np.zeros((1, 1, 20, 20), np.float32))
    with pytest.raises(ValueError, match=r"20x20; this model takes 32x32 \(or 28x28, padded\)"):
        load_inputs(tmp_path / "big.npy", (1, 32, 32))
    np.save(tmp_path / "range.npy", np.full((1, 1, 32, 32), 255, np.float32))
    with pytest.raises(ValueError, match=r"expected \[-1, 1\]"):
        load_inputs(tmp_path / "range.npy", (1, 32, 32))
    with pytest.raises(FileNotFoundError):
        load_inputs(tmp_path / "missing.npy", (1, 32, 32))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    for name, extra in (("text", ["--cond", "text", "--text-encoder", "small"]), ("class", ["--cond", "class"]),
                        ("plain", [])):
        assert main(["train", "--preset", "tiny", *extra, "--out", str(root / name), "--no-progress"]) == 0
    x = np.random.default_rng(1).uniform(-1, 1, (3, 1, 32, 32)).astype(np.float32)
    np.save(root / "x.npy", x)
    return root


def test_the_inpaint_command_on_a_text_model_without_a_prompt(runs, tmp_path):
    f = tmp_path / "f.npy"
    assert main(["inpaint", "--ckpt", str(runs / "text"), "--input", str(runs / "x.npy"), "--mask", "right",
                 "--seed", "7", "--npy", str(f), "--out", str(tmp_path / "f.png")]) == 0
    out, x = np.load(f), np.load(runs / "x.npy")
    assert out.shape == x.shape and out.dtype == np.float32 and (tmp_path / "f.png").is_file()
    assert np.abs(out[..., :16] - x[..., :16]).max() <= 1e-4 and np.abs(out[..., 16:] - x[..., 16:]).max() > 1e-3
    g = tmp_path / "g.npy"
    assert main(["inpaint", "--ckpt", str(runs / "text"), "--input", str(runs / "x.npy"), "--mask", "right",
                 "--seed", "7", "--npy", str(g), "--out", str(tmp_path / "g.png")]) == 0
    np.testing.assert_array_equal(np.load(g), out)                     # a fixed seed reproduces it


@pytest.mark.parametrize("model,extra", [("text", ["--prompt", "a handwritten two", "--guidance", "2"]),
                                         ("class", ["--class", "3", "--guidance", "2"]), ("plain", [])])
def test_img2img_and_inpaint_commands_on_every_kind_of_model(runs, tmp_path, model, extra):
    for cmd in (["img2img", "--strength", "0.5"], ["inpaint", "--mask", "2,2,20,30"]):
        npy = tmp_path / f"{cmd[0]}.npy"
        assert main([cmd[0], "--ckpt", str(runs / model), "--input", str(runs / "x.npy"), *cmd[1:], *extra,
                     "--steps", "4", "--npy", str(npy), "--out", str(tmp_path / "o.png")]) == 0
        assert np.load(npy).shape == (3, 1, 32, 32)


@pytest.mark.parametrize("args,msg", [
    (["img2img", "--strength", "1.5"], "strength is in [0, 1]"),
    (["inpaint", "--mask", "right", "--class", "3"], "unconditional"),
    (["inpaint", "--mask", "0,0,40,4"], "rectangle must satisfy"),
])
def test_pipeline_errors(runs, tmp_path, capsys, args, msg):
    assert main([args[0], "--ckpt", str(runs / "plain"), "--input", str(runs / "x.npy"), *args[1:],
                 "--out", str(tmp_path / "o.png")]) == 2
    assert msg in capsys.readouterr().err


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_denoiser():
    """Tweedie: E[x0 | x, y] = E[x0 | x] + sigma^2 grad log p(y | x); scale 1 turns the mixture's
    unconditional denoiser into its class-conditional one, exactly."""
    from test_cfg import ClassMixture

    from diffusionlab.core.guidance import ClassifierGuided

    m = ClassMixture(K=3, D=4, s=0.4)

    def classifier(x, sigma):  # log p(k | x, sigma) up to a constant: equal priors, N(mu_k, (s^2 + sigma^2) I)
        v = (m.s ** 2 + sigma.to(x.dtype) ** 2).reshape(-1, 1)
        return -((x[:, None] - m.mu[None].to(x.dtype)) ** 2).sum(-1) / (2 * v)

    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0, 9.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    uncond = lambda x, s, cond=None: m.uncond_mean(x, torch.as_tensor(s, dtype=torch.float64))  # noqa: E731
    guided = ClassifierGuided(uncond, classifier, labels, 1.0)
    torch.testing.assert_close(guided(x, sigma).double(), m.cond_mean(x, sigma, labels), atol=2e-5, rtol=1e-5)
    sharper = ClassifierGuided(uncond, classifier, labels, 3.0)(x, sigma).double()
    torch.testing.assert_close(sharper - uncond(x, sigma), 3 * (guided(x, sigma).double() - uncond(x, sigma)),
                               atol=5e-5, rtol=1e-4)
    assert torch.equal(ClassifierGuided(uncond, classifier, labels, 0.0)(x, sigma), uncond(x, sigma))


def test_train_a_classifier_and_guide_an_unconditional_model(runs, tmp_path, capsys):
    cls = tmp_path / "cls"
    assert main(["train-classifier", "--data", "digits", "--steps", "20", "--ckpt", str(runs / "plain"),
                 "--out", str(cls)]) == 0
    assert (cls / "classifier.safetensors").is_file() and (cls / "classifier.json").is_file()
    assert main(["train-classifier", "--data", "digits", "--steps", "1", "--out", str(cls)]) == 2   # no overwrite
    base = ["sample", "--ckpt", str(runs / "plain"), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]
    assert main([*base, "--classifier", str(cls), "--class", "3", "--classifier-scale", "3",
                 "--npy", str(tmp_path / "a.npy")]) == 0
    assert main([*base, "--npy", str(tmp_path / "b.npy")]) == 0
    assert np.abs(np.load(tmp_path / "a.npy") - np.load(tmp_path / "b.npy")).max() > 1e-4
    assert main(["sample", "--ckpt", str(runs / "class"), "--n", "2", "--steps", "3", "--out", str(tmp_path / "c.png"),
                 "--class", "3", "--guidance", "2", "--classifier", str(cls)]) == 0   # composes with CFG
    capsys.readouterr()
    assert main([*base, "--class", "3"]) == 2
    assert "--classifier" in capsys.readouterr().err
    assert main([*base, "--classifier", str(cls)]) == 2
    assert "give --class" in capsys.readouterr().err
