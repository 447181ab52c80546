"""The pipelines (issue 17): img2img (SDEdit), inpainting (RePaint) over any sampler, classifier
guidance, super-resolution (SR3: image conditioning by concatenation), their inputs and masks,
and the CLI commands on conditional and unconditional models."""
import json

import numpy as np
import pytest
import torch

from diffusionlab.core.cond import CondSpec

from diffusionlab.apps.cli import main
from diffusionlab.core.protocol import DenoiserInfo
from diffusionlab.core.samplers import SAMPLERS
from diffusionlab.errors import UserError
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


@pytest.mark.parametrize("strength,n,k", [(0.25, 10, 2), (0.35, 10, 3), (0.34, 10, 3), (0.45, 10, 4), (0.99, 10, 9),
                                           (1.0, 10, 10), (1.0, 7, 7), (0.05, 10, 0), (0.29, 100, 28)])
def test_img2img_runs_diffusers_floor_of_s_times_n_steps(strength, n, k):
    from diffusionlab.core.sampling import CountingDenoiser
    from diffusionlab.pipelines.img2img import img2img_steps

    assert img2img_steps(strength, n) == k == min(int(n * strength), n)  # diffusers: int(N * strength)
    den, x = CountingDenoiser(GaussImages()), _inputs(2)
    out = img2img(den, x, strength, steps=n, sampler="euler")          # Euler: one NFE per step
    assert den.nfe == k
    if k == 0:
        assert torch.equal(out, x)                                     # nothing to run: the input comes back


def test_img2img_starts_at_sigma_n_minus_k_and_refuses_a_bad_strength():
    from diffusionlab.core.sampling import resolve_sigmas

    den, x, seen = GaussImages(), _inputs(2), []

    def recording(x_, sigma, cond=None):
        seen.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return den(x_, sigma, cond)

    recording.info = den.info
    img2img(recording, x, 0.25, steps=10, sampler="euler")
    grid = resolve_sigmas(den, 10, sampler="euler")                  # the grid is the sampler's default
    assert seen == pytest.approx([float(s) for s in grid[8:10]])      # t_start = N - k = 8
    with pytest.raises(UserError, match=r"is in \[0, 1\]") as e:
        img2img(GaussImages(), _inputs(2), 1.5)
    assert e.value.param == "strength" and "--" not in e.value.message


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
    assert den.nfe == 6 + 3            # one jump back of 3 steps: steps 2-4 run twice, 0-1 and the step to 0 once
    fill = parse_mask("left", SHAPE).expand_as(out)
    torch.testing.assert_close(out[fill], GaussImages().mu.expand_as(out)[fill], atol=0.2, rtol=0)


class CorrelatedGauss:
    """Images ~ N(0, S), S = A A^T + 0.05^2 I with four smooth factors: the exact denoiser
    S (S + sigma^2 I)^-1 x and the exact inpainting posterior mean S_uk S_kk^-1 x_k."""

    def __init__(self):
        u = torch.linspace(0, 1, 8)
        yy, xx = (t.flatten() for t in torch.meshgrid(u, u, indexing="ij"))
        a = torch.stack([torch.ones(64), xx * 2 - 1, yy * 2 - 1, (xx - 0.5) * (yy - 0.5) * 4], 1).double() * 0.5
        self.S = a @ a.T + 0.05 ** 2 * torch.eye(64, dtype=torch.float64)
        self.info = DenoiserInfo(sigma_min=0.01, sigma_max=40.0, image_shape=SHAPE)

    def __call__(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        eye = torch.eye(64, dtype=torch.float64)
        out = torch.stack([self.S @ torch.linalg.solve(self.S + si ** 2 * eye, v) for si, v in zip(s, x.double().flatten(1))])
        return out.reshape(x.shape).to(x.dtype)


def test_reconstruction_guidance_moves_the_fill_to_the_exact_posterior_mean():
    den, m = CorrelatedGauss(), parse_mask("right", SHAPE)
    torch.manual_seed(1)
    x = (torch.randn(1, 64, dtype=torch.float64) @ torch.linalg.cholesky(den.S).T).float().reshape(1, *SHAPE)
    u, k = m.flatten().nonzero().flatten(), (~m.flatten()).nonzero().flatten()
    exact = den.S[u][:, k] @ torch.linalg.solve(den.S[k][:, k], x.double().flatten()[k])
    err = {}
    for w in (0.0, 5.0):
        out = inpaint(den, x.expand(64, *SHAPE), m, steps=8, sampler="euler_ancestral", seed=0, jump_length=1,
                      resample=1, reconstruction=w, reconstruction_sigma_min=0.0)
        err[w] = float((out.flatten(1)[:, u].double().mean(0) - exact).abs().mean())
    assert err[0.0] > 0.2 and err[5.0] < 0.05, err          # replacement alone misses the posterior; guided, it is hit


def test_reconstruction_guidance_leaves_independent_pixels_alone():
    den, x, m = GaussImages(), _inputs(3), parse_mask("left", SHAPE)
    a = inpaint(den, x, m, steps=6, sampler="euler_ancestral", seed=2, reconstruction=0.0)
    b = inpaint(den, x, m, steps=6, sampler="euler_ancestral", seed=2, reconstruction=20.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)     # no pixel coupling: nothing for the gradient to carry
    from diffusionlab.core.guidance import ReconstructionGuided

    den = CorrelatedGauss()
    g = ReconstructionGuided(den, x, (~m).float(), 20.0, sigma_min=0.5)
    assert torch.equal(g(x, torch.full((3,), 0.4)), den(x, torch.full((3,), 0.4)))      # off below the floor
    assert not torch.allclose(g(x, torch.full((3,), 0.6)), den(x, torch.full((3,), 0.6)))
    for kw, param in ((dict(reconstruction=-1.0), "reconstruction"), (dict(jump_length=0), "jump_length"),
                      (dict(resample=0), "resample")):
        with pytest.raises(UserError) as e:
            inpaint(den, x, m, steps=2, **kw)
        assert e.value.param == param and "--" not in e.value.message
    with pytest.raises(UserError, match="does not fit") as e:
        inpaint(den, x, torch.zeros(2, 1, 8, 8, dtype=torch.bool), steps=2)
    assert e.value.param == "mask"


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
        with pytest.raises(UserError, match=msg) as e:
            parse_mask(spec, SHAPE)
        assert e.value.param == "mask" and "--" not in e.value.message     # the parameter, never a CLI flag


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
                        ("plain", []), ("sr", ["--cond", "image", "--task", "superres", "--lowres", "16"])):
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
                                         ("class", ["--class", "3", "--guidance", "2"]), ("plain", []),
                                         ("sr", ["--guidance", "2"])])
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
    capped = ClassifierGuided(uncond, classifier, labels, 1.0, sigma_max=1.0)(x, sigma).double()
    torch.testing.assert_close(capped[3:], uncond(x, sigma)[3:].double())          # sigma 2, 4, 9: no term
    torch.testing.assert_close(capped[:3], guided(x, sigma).double()[:3])            # sigma <= 1: the full term


def test_train_a_classifier_and_guide_an_unconditional_model(runs, tmp_path, capsys):
    cls = tmp_path / "cls"
    assert main(["train-classifier", "--data", "digits", "--steps", "20", "--ckpt", str(runs / "plain"),
                 "--out", str(cls)]) == 0
    ck = cls / "checkpoints" / "step-00000020"   # the trainer's checkpoint (manifest, format version)
    assert (cls / "checkpoints" / "latest").read_text().strip() == ck.name and (ck / "manifest.json").is_file()
    assert json.loads((ck / "config.json").read_text())["kind"] == "classifier"
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
    assert "classifier guidance" in capsys.readouterr().err
    assert main([*base, "--classifier", str(cls)]) == 2
    assert "--class: classifier guidance steers toward a class" in capsys.readouterr().err


# ---------------------------------------------------------------- super-resolution (SR3)

class GaussSR:
    """Full-resolution images ~ N(up(y), s^2 I) given the low-resolution y: the exact conditional
    denoiser c + s^2 / (s^2 + sigma^2) (x - c), c = cond.image (the upsampled y)."""

    def __init__(self, s=0.1):
        self.s = s
        self.info = DenoiserInfo(sigma_min=0.01, sigma_max=20.0, image_shape=SHAPE,
                                 cond=CondSpec(kind="image", image_channels=1, lowres=(4, 4)))

    def __call__(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        c = cond.image.to(x.dtype)
        return c + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - c)


def test_upscale_conditions_on_the_bicubic_upsampled_input_and_averages_samples():
    from diffusionlab.data.degrade import superres_condition
    from diffusionlab.pipelines.upscale import upscale

    den = GaussSR()
    low = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    up = superres_condition(low, (8, 8))
    d = upscale(den, low, steps=30, sampler="heun", seed=3) - up        # a sample of N(up(y), s^2 I)
    assert abs(float(d.mean())) < 0.01 and abs(float(d.std()) - den.s) < 0.005
    one = upscale(den, low, steps=30, sampler="euler_ancestral", seed=3)
    two = upscale(den, low, steps=30, sampler="euler_ancestral", seed=3, samples=2)
    nxt = upscale(den, low, steps=30, sampler="euler_ancestral", seed=4)
    torch.testing.assert_close(two, (one + nxt) / 2, atol=1e-6, rtol=0)   # mean of seeds s, s + 1
    part = upscale(den, low[:9], steps=30, sampler="euler_ancestral", seed=3, batch_size=4)
    torch.testing.assert_close(part, one[:9], atol=1e-6, rtol=0)      # input i has seed stream i, whatever the batch
    with pytest.raises(ValueError, match="upscale takes 4x4 inputs"):
        upscale(den, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="super-resolution checkpoint"):
        upscale(GaussImages(), low)


def test_degradation_is_block_means_and_bicubic_keeps_constants():
    from diffusionlab.data.degrade import check_lowres, downsample, upsample

    x = torch.arange(16.0).reshape(1, 1, 4, 4) / 16
    torch.testing.assert_close(downsample(x, 2), x.reshape(1, 1, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 1, 2, 2, 4)
                               .mean(-1), atol=1e-7, rtol=0)
    torch.testing.assert_close(upsample(torch.full((1, 1, 4, 4), 0.3), 8), torch.full((1, 1, 8, 8), 0.3))
    assert float(upsample(torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]), 8).abs().max()) <= 1.0   # clamped
    for bad in (32, 0, 12):
        with pytest.raises(UserError, match=f"low resolution {bad} must divide") as e:
            check_lowres(bad, 32)
        assert e.value.param == "lowres" and "--" not in e.value.message


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_the_concatenation_path_of_both_networks(arch):
    from diffusionlab.nn import build_network

    cfg = {"unet": dict(dim=8, dim_mults=(1, 2), channels=1, groups=4, mid_attn=False, cond_channels=1),
           "dit": dict(patch_size=4, hidden=32, depth=1, heads=2, channels=1, cond_channels=1)}[arch]
    torch.manual_seed(0)
    net = build_network(arch, cfg)
    for p in net.parameters():  # zero-initialised output layers would hide the input
        torch.nn.init.normal_(p, std=0.05)
    from diffusionlab.core.cond import Cond

    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5.0, 50.0, 500.0])
    img = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        out = net(x, t, Cond(image=img))
        assert out.shape == x.shape
        assert (out - net(x, t, Cond(image=-img))).abs().max() > 1e-4            # the image is read
        null = net(x, t, Cond(image=img, null=torch.tensor([True, False, True])))
        zero = net(x, t, Cond(image=torch.zeros_like(img)))
        torch.testing.assert_close(null[[0, 2]], zero[[0, 2]])                   # null = the zero image
        torch.testing.assert_close(null[1], out[1])
        torch.testing.assert_close(net(x, t, Cond()), zero)                       # none given: the null image
    with pytest.raises(ValueError, match=r"conditioning image \[B, 1, 16, 16\]"):
        net(x, t, Cond(image=torch.zeros(3, 1, 8, 8)))
    plain = build_network(arch, {**cfg, "cond_channels": 0})
    with pytest.raises(ValueError, match="takes no image conditioning"):
        plain(x, t, Cond(image=img))


def test_the_training_condition_is_the_degraded_batch_after_augmentation(tmp_path):
    from diffusionlab.data.degrade import downsample, superres_condition
    from diffusionlab.training import tiny_config
    from diffusionlab.training.trainer import Trainer

    t = Trainer(config=tiny_config(cond="image", task="superres", lowres=8, hflip=True, out_dir=str(tmp_path)))
    assert t.model.config["cond_channels"] == 1
    b = t.batch(0)
    torch.testing.assert_close(b.cond.image, superres_condition(downsample(b.x, 8), 32))
    for bad, msg in ((dict(lowres=None), "needs task .superres. and a low-resolution side lowres"), (dict(lowres=10), "lowres: the low resolution 10"),
                     (dict(cond="class"), "belongs to image conditioning")):
        with pytest.raises(ValueError, match=msg):
            Trainer(config=tiny_config(**{"cond": "image", "task": "superres", "lowres": 8, **bad},
                                       out_dir=str(tmp_path / "x")))


def test_the_upscale_command(runs, tmp_path, capsys):
    from diffusionlab.data.degrade import downsample

    x = np.load(runs / "x.npy")
    np.save(tmp_path / "low.npy", downsample(torch.from_numpy(x), 16).numpy())
    base = ["upscale", "--ckpt", str(runs / "sr"), "--steps", "4", "--out", str(tmp_path / "u.png")]
    assert main([*base, "--input", str(tmp_path / "low.npy"), "--seed", "2", "--npy", str(tmp_path / "a.npy")]) == 0
    assert main([*base, "--input", str(runs / "x.npy"), "--degrade", "--seed", "2",
                 "--npy", str(tmp_path / "b.npy")]) == 0
    a = np.load(tmp_path / "a.npy")
    assert a.shape == (3, 1, 32, 32) and (tmp_path / "u.png").is_file()
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), a, atol=1e-6)   # --degrade makes the same input
    assert main([*base, "--input", str(tmp_path / "low.npy"), "--samples", "2", "--guidance", "1.5"]) == 0
    capsys.readouterr()
    for args, msg in ((["--input", str(runs / "x.npy")], "add --degrade"), (["--input", str(tmp_path / "low.npy"),
                      "--prompt", "a two"], "image-conditional"), (["--input", str(tmp_path / "low.npy"),
                      "--samples", "0"], "--samples: is at least 1")):
        assert main([*base, *args]) == 2
        assert msg in capsys.readouterr().err
    assert main(["upscale", "--ckpt", str(runs / "plain"), "--input", str(tmp_path / "low.npy"),
                 "--out", str(tmp_path / "p.png")]) == 2
    assert "super-resolution checkpoint" in capsys.readouterr().err
