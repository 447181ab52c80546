"""Classifier-free guidance (core/cfg.py) on a class-conditional Gaussian mixture, where the
conditional and unconditional denoisers are closed forms."""
import math

import pytest
import torch

from diffusionlab.core.cond import CondSpec

import diffusionlab as dl
from diffusionlab.core.cfg import ClassifierFree, classifier_free, null_cond
from diffusionlab.core.cond import Cond
from diffusionlab.core.guidance import Autoguided, Clipped
from diffusionlab.core.protocol import DenoiserInfo
from diffusionlab.core.samplers import SAMPLERS
from diffusionlab.core.sampling import CountingDenoiser

F64 = torch.float64


class ClassMixture:
    """Class k ~ N(mu_k, s^2 I) in D dims, classes equally likely. Conditional denoiser:
    mu_k + s^2 / (s^2 + sigma^2) (x - mu_k); null label: the mixture's posterior mean."""

    def __init__(self, K=3, D=4, s=0.3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(K, D, generator=g, dtype=F64) * 2
        self.s, self.K = s, K
        self.calls, self.batches = 0, []
        self.info = DenoiserInfo(sigma_min=0.01, sigma_max=40.0, cond=CondSpec(kind="class", num_classes=K))

    def cond_mean(self, x, sigma, k):
        r = (self.s ** 2 / (self.s ** 2 + sigma ** 2)).reshape(-1, 1)
        mu = self.mu[k]
        return mu + r * (x - mu)

    def uncond_mean(self, x, sigma):
        v = (self.s ** 2 + sigma ** 2).reshape(-1, 1, 1)
        logp = -((x[:, None] - self.mu[None]) ** 2).sum(-1, keepdim=True) / (2 * v)
        w = torch.softmax(logp, dim=1)
        post = self.mu[None] + (self.s ** 2 / v) * (x[:, None] - self.mu[None])
        return (w * post).sum(1)

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=F64).expand(x.shape[0])
        cond = cond if cond is not None else Cond()
        if cond.labels is None:
            return self.uncond_mean(x, sigma)
        null = cond.null_mask(x.shape[0])
        return torch.where(null[:, None], self.uncond_mean(x, sigma), self.cond_mean(x, sigma, cond.labels))


def _x(n=5, D=4, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2


LABELS = torch.tensor([0, 1, 2, 0, 1])


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5])
def test_cfg_is_the_closed_form_lerp(scale):
    m = ClassMixture()
    x, sigma = _x(), torch.full((5,), 0.7, dtype=F64)
    got = ClassifierFree(m, scale)(x, sigma, Cond(labels=LABELS))
    d_c, d_u = m.cond_mean(x, sigma, LABELS), m.uncond_mean(x, sigma)
    assert torch.allclose(got, d_u + scale * (d_c - d_u), atol=1e-12)
    assert classifier_free(m, 1.0) is m


def test_combining_x0_equals_the_seeds_combination_of_eps_and_v():
    m = ClassMixture()
    x, s, w = _x(), 0.9, 2.5
    sigma = torch.full((5,), s, dtype=F64)
    d_c, d_u = m.cond_mean(x, sigma, LABELS), m.uncond_mean(x, sigma)
    eps_c, eps_u = (x - d_c) / s, (x - d_u) / s
    eps = (1 + w) * eps_c - w * eps_u          # the seeds' form, w = scale - 1
    got = ClassifierFree(m, 1 + w)(x, sigma, Cond(labels=LABELS))
    assert torch.allclose(got, x - s * eps, atol=1e-12)
    # v in VP coordinates: v = a eps - b x0 with a = 1 / sqrt(1 + s^2), b = s a (x_vp = a x)
    a = 1 / math.sqrt(1 + s * s)
    v_c, v_u = a * eps_c - s * a * d_c, a * eps_u - s * a * d_u
    v = (1 + w) * v_c - w * v_u
    x0_from_v = a * (a * x) - s * a * v          # x0 = a x_vp - b v
    assert torch.allclose(got, x0_from_v, atol=1e-12)


def test_the_negative_condition_replaces_the_null_one():
    m = ClassMixture()
    x, sigma = _x(), torch.full((5,), 0.5, dtype=F64)
    neg = Cond(labels=torch.tensor([2]))
    got = ClassifierFree(m, 3.0, negative=neg)(x, sigma, Cond(labels=LABELS))
    d_c, d_n = m.cond_mean(x, sigma, LABELS), m.cond_mean(x, sigma, torch.full((5,), 2))
    assert torch.allclose(got, d_n + 3.0 * (d_c - d_n), atol=1e-12)
    # no positive condition: the null condition is the positive, the negative stays
    got = ClassifierFree(m, 3.0, negative=neg)(x, sigma, None)
    d_u = m.uncond_mean(x, sigma)
    assert torch.allclose(got, d_n + 3.0 * (d_u - d_n), atol=1e-12)


def test_both_halves_run_in_one_batched_forward():
    m = ClassMixture()
    ClassifierFree(m, 4.0)(_x(), torch.full((5,), 0.5, dtype=F64), Cond(labels=LABELS))
    assert m.calls == 1 and m.batches == [10]


def test_rescale_zero_is_plain_cfg_and_one_restores_the_conditional_std():
    m = ClassMixture()
    x, s = _x(n=5, D=64 // 16), 1.3
    sigma = torch.full((5,), s, dtype=F64)
    c = Cond(labels=LABELS)
    assert torch.equal(ClassifierFree(m, 5.0, rescale=0.0)(x, sigma, c), ClassifierFree(m, 5.0)(x, sigma, c))
    got = ClassifierFree(m, 5.0, rescale=1.0)(x, sigma, c)
    a = 1 / (1 + s ** 2) ** 0.5  # v = alpha eps - sigma_vp x0 in normalised coordinates (the space of the rescale)
    v, v_c = ((a * (x - d) / s - s * a * d) for d in (got, m.cond_mean(x, sigma, LABELS)))
    assert torch.allclose(v.std(dim=1), v_c.std(dim=1), rtol=1e-10)


def test_guidance_interval_uses_the_conditional_model_outside():
    m = ClassMixture()
    x = _x()
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 9.0], dtype=F64)
    got = ClassifierFree(m, 4.0, interval=(0.5, 2.0))(x, sigma, Cond(labels=LABELS))
    full = ClassifierFree(m, 4.0)(x, sigma, Cond(labels=LABELS))
    d_c = m.cond_mean(x, sigma, LABELS)
    inside = torch.tensor([False, False, True, True, False])
    assert torch.allclose(got[inside], full[inside]) and torch.allclose(got[~inside], d_c[~inside])


def test_cfg_exposes_its_parts_and_composes_with_other_wrappers():
    m = ClassMixture()
    cfg = ClassifierFree(m, 2.0)
    den = Clipped(Autoguided(CountingDenoiser(cfg), cfg, 1.5), -3, 3)
    x, sigma = _x(), torch.full((5,), 0.5, dtype=F64)
    out = den(x, sigma, Cond(labels=LABELS))
    assert out.shape == x.shape and set(cfg.last) == {"sigma", "cond", "uncond"}
    assert den.info.cond.fields == ("labels",)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_a_cfg_denoiser(name):
    m = ClassMixture()
    knobs = {"n_steps_each": 3} if name == "annealed_langevin" else {}
    x = dl.sample(ClassifierFree(m, 2.0), (4, 4), sampler=name, steps=4, cond=Cond(labels=torch.tensor([0, 1, 2, 0])),
                  seed=0, noise=None, **knobs)
    assert x.shape == (4, 4) and torch.isfinite(x).all()


def test_scale_one_samples_the_class_and_guidance_sharpens_it():
    m = ClassMixture(K=3, D=2, s=0.3)
    n = 3000
    labels = torch.zeros(n, dtype=torch.long)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    margins = {}
    for scale in (1.0, 3.0):
        x = dl.sample(classifier_free(m, scale), (n, 2), sampler="heun", steps=40, cond=Cond(labels=labels),
                      noise=noise)
        if scale == 1.0:  # the exact conditional denoiser samples class 0 exactly
            assert (x.mean(0) - m.mu[0]).abs().max() < 0.03 and x.std(0).mean() == pytest.approx(0.3, rel=0.08)
        d2 = ((x[:, None] - m.mu[None]) ** 2).sum(-1)
        margins[scale] = (d2[:, 1:].min(1).values - d2[:, 0]).mean()  # the class-0 log-odds margin, x 2 s^2
    assert margins[3.0] > margins[1.0]  # guidance pushes samples away from the other classes


def test_learned_variance_keeps_the_conditional_half():
    class LV(ClassMixture):
        def __init__(self):
            super().__init__()
            self.info = DenoiserInfo(cond=CondSpec(kind="class", num_classes=3), learned_variance=True)

        def denoise_with_variance(self, x, sigma, cond=None):
            return self(x, sigma, cond), torch.arange(x.shape[0], dtype=F64)[:, None].expand_as(x)

    x0, frac = ClassifierFree(LV(), 2.0).denoise_with_variance(_x(), torch.full((5,), 0.5, dtype=F64),
                                                              Cond(labels=LABELS))
    assert frac.shape == (5, 4) and torch.equal(frac[:, 0], torch.arange(5, dtype=F64))


def test_errors():
    m = ClassMixture()
    with pytest.raises(ValueError, match="finite"):
        ClassifierFree(m, float("nan"))
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFree(m, 2.0, rescale=1.5)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFree(m, 2.0, interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="conditional model"):
        null_cond(lambda x, s, c=None: x, 3)
    with pytest.raises(ValueError, match="does not fit"):
        ClassifierFree(m, 2.0)(_x(), torch.full((5,), 0.5, dtype=F64), Cond(labels=torch.tensor([0, 1])))


# ------------------------------------------------------------------ class-conditional training and the CLI
DIGITS = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    from diffusionlab.apps.cli import main

    run = tmp_path_factory.mktemp("cls")
    assert main(["train", *DIGITS, "--cond", "class", "--p-uncond", "0.2", "--guidance", "2.5", "--steps", "3",
                 "--out", str(run)]) == 0
    return run


def test_class_conditional_checkpoint_records_its_conditioning(class_run):
    import json

    cfg = json.loads((class_run / "checkpoints" / "latest").parent.joinpath(
        (class_run / "checkpoints" / "latest").read_text().strip(), "config.json").read_text())
    assert cfg["conditioning"] == {"kind": "class", "num_classes": 10, "class_names": [str(k) for k in range(10)]}
    assert cfg["sampling"]["guidance"] == 2.5 and cfg["network"]["config"]["num_classes"] == 10
    den = dl.load_denoiser(class_run)
    assert den.info.cond.fields == ("labels",) and den.info.default_guidance == 2.5
    assert den.info.cond.class_names == tuple(str(k) for k in range(10))
    assert (den.info.default_sampler, den.info.default_steps) == (cfg["sampling"]["sampler"], cfg["sampling"]["steps"])


def test_sample_a_class_with_guidance_and_a_negative_class(class_run, tmp_path):
    import numpy as np

    from diffusionlab.apps.cli import main

    outs = {}
    for name, extra in {"plain": [], "three": ["--class", "3"], "named": ["--class", "3"],
                        "guided": ["--class", "3", "--guidance", "4", "--negative-class", "5",
                                   "--guidance-rescale", "0.5", "--guidance-interval", "0.1,50"]}.items():
        assert main(["sample", "--ckpt", str(class_run), "--n", "3", "--steps", "3", "--sampler", "ddim",
                     "--precision", "fp32", "--out", str(tmp_path / f"{name}.png"), "--npy",
                     str(tmp_path / f"{name}.npy"), *extra]) == 0
        outs[name] = np.load(tmp_path / f"{name}.npy")
    assert np.allclose(outs["three"], outs["named"]) and not np.allclose(outs["three"], outs["plain"])
    assert not np.allclose(outs["three"], outs["guided"])


@pytest.mark.parametrize("extra,msg", [(["--class", "12"], "outside the model's classes 0..9"),
                                       (["--class", "seven"], "not a class of this model"),
                                       (["--negative-class", "-1"], "outside")])
def test_bad_classes_are_refused(class_run, tmp_path, capsys, extra, msg):
    from diffusionlab.apps.cli import main

    assert main(["sample", "--ckpt", str(class_run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "x.png"),
                 *extra]) == 2
    assert msg in capsys.readouterr().err


def test_class_flags_on_an_unconditional_checkpoint_are_refused(tmp_path, capsys):
    from diffusionlab.apps.cli import main

    assert main(["train", *DIGITS, "--steps", "1", "--out", str(tmp_path / "u")]) == 0
    assert main(["sample", "--ckpt", str(tmp_path / "u"), "--n", "1", "--steps", "2", "--class", "3",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_class_conditioning_needs_labelled_data(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from diffusionlab.apps.cli import main

    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path), "--channels", "1", "--image-size", "8",
                 "--cond", "class", "--steps", "1", "--batch-size", "4", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    assert "needs labels" in capsys.readouterr().err and not (tmp_path / "run").exists()
