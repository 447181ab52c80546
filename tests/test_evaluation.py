"""Tests for diffusionlab.evaluation (digit classifier, feature FD, digit metrics).

The classifier is trained once per module into a temporary cache dir (~20 s on a CPU);
the user's ~/.cache is never touched.
"""
import json
import os
import time

import numpy as np
import pytest
import torch

from diffusionlab.data import load_mnist
from diffusionlab.evaluation import (
    CLASSIFIER_FILENAME,
    DigitClassifier,
    default_cache_dir,
    digit_metrics,
    extract_features,
    feature_stats,
    format_digit_metrics,
    frechet_distance,
    load_digit_classifier,
)
from diffusionlab.evaluation import digits as digits_mod


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dl_cache"))


@pytest.fixture(scope="module")
def trained(cache_dir):
    t0 = time.perf_counter()
    clf = load_digit_classifier(cache_dir=cache_dir)
    return clf, time.perf_counter() - t0


@pytest.fixture(scope="module")
def clf(trained):
    return trained[0]


@pytest.fixture(scope="module")
def heldout():
    return load_mnist("heldout", image_size=32, return_labels=True)


@pytest.fixture(scope="module")
def train_images():
    return load_mnist("train", image_size=32)


@pytest.fixture(scope="module")
def heldout_metrics(clf, heldout):
    return digit_metrics(heldout[0], classifier=clf)


# ----------------------------------------------------------------------- Frechet distance
def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_distance_zero_and_symmetric():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 8))
    b = rng.normal(size=(400, 8)) * 1.5 + 0.3
    mu_a, sig_a = feature_stats(a)
    mu_b, sig_b = feature_stats(b)
    assert mu_a.dtype == np.float64 and sig_a.shape == (8, 8)
    assert frechet_distance(mu_a, sig_a, mu_a, sig_a) == pytest.approx(0.0, abs=1e-8)
    ab = frechet_distance(mu_a, sig_a, mu_b, sig_b)
    ba = frechet_distance(mu_b, sig_b, mu_a, sig_a)
    assert ab > 0.1
    assert ab == pytest.approx(ba, rel=1e-6)


def test_frechet_distance_singular_covariance_is_finite():
    mu = np.zeros(4)
    sig = np.zeros((4, 4))
    sig[0, 0] = 1.0
    out = frechet_distance(mu, sig, mu + 1, np.zeros((4, 4)))
    assert np.isfinite(out) and out >= 4.0 - 1e-6


def test_feature_stats_accepts_tensor():
    mu, sig = feature_stats(torch.ones(10, 3))
    assert mu.dtype == np.float64 and np.allclose(mu, 1) and np.allclose(sig, 0)


# ----------------------------------------------------------------------- classifier
def test_classifier_accuracy_and_shapes(clf, heldout):
    x, y = heldout
    assert isinstance(clf, DigitClassifier) and not clf.training
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
        feats = clf.features(x[:7])
        probs = clf.predict_proba(x[:7])
        # 28x28 and 16x16 inputs are resized internally
        logits28 = clf(load_mnist("heldout", image_size=28)[:7])
        logits16 = clf(torch.nn.functional.interpolate(x[:7], size=(16, 16)))
    assert acc >= 0.95, acc
    assert feats.shape == (7, clf.feature_dim) and feats.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(7), atol=1e-5)
    assert logits28.shape == (7, 10) and logits16.shape == (7, 10)
    assert (logits28.argmax(1) == y[:7]).float().mean() >= 0.7

    f, p = extract_features(clf, x[:123], batch_size=50)
    assert f.shape == (123, clf.feature_dim) and p.shape == (123, 10)
    assert f.dtype == np.float64 and p.dtype == np.float64


def test_cache_written_and_reused(cache_dir, trained, monkeypatch):
    clf, _ = trained
    path = os.path.join(cache_dir, CLASSIFIER_FILENAME)
    assert os.path.isfile(path)
    info_path = os.path.join(cache_dir, "digit_classifier_v1.json")
    with open(info_path) as f:
        info = json.load(f)
    assert info["heldout_accuracy"] >= 0.95
    assert not [n for n in os.listdir(cache_dir) if n.startswith(".tmp")]

    def boom(*a, **k):
        raise AssertionError("should not retrain when the cache is valid")

    monkeypatch.setattr(digits_mod, "train_digit_classifier", boom)  # reuse is proven by not retraining
    again = load_digit_classifier(cache_dir=cache_dir)
    sd1, sd2 = clf.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not again.training
    assert again.heldout_accuracy == pytest.approx(info["heldout_accuracy"])


def test_corrupt_cache_is_retrained(tmp_path, monkeypatch):
    path = tmp_path / CLASSIFIER_FILENAME
    path.write_bytes(b"\x00garbage, not a safetensors file" * 10)
    calls = []
    original = digits_mod.train_digit_classifier

    def quick(*a, **k):  # keep the test fast: one short epoch is enough to prove retraining
        calls.append(1)
        return original(seed=0, epochs=1, num_threads=1)

    monkeypatch.setattr(digits_mod, "train_digit_classifier", quick)
    model = load_digit_classifier(cache_dir=str(tmp_path))
    assert calls == [1]
    assert isinstance(model, DigitClassifier)
    # the garbage was replaced by a loadable file
    from safetensors.torch import load_file
    state = load_file(str(path))
    assert set(state) == set(model.state_dict())


def test_default_cache_dir(monkeypatch):
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", "/some/where")
    assert default_cache_dir() == "/some/where"
    monkeypatch.delenv("DIFFUSIONLAB_CACHE")
    assert default_cache_dir() == os.path.expanduser("~/.cache/diffusionlab")


# ----------------------------------------------------------------------- digit_metrics
def test_metrics_on_real_heldout(heldout_metrics):
    m = heldout_metrics
    assert m["n"] == 1000
    assert m["confident_fraction"] > 0.85
    assert m["class_entropy"] > 0.98
    assert len(m["class_histogram"]) == 10 and sum(m["class_histogram"]) == 1000
    assert m["fd"] == pytest.approx(0.0, abs=1e-6)  # the samples are the reference
    assert m["fd_floor"] > 0
    assert m["nn_ratio"] == pytest.approx(1.0)
    assert m["copied_fraction"] <= 0.05
    assert m["floor_confident_fraction"] == m["confident_fraction"]
    for k, v in m.items():
        assert isinstance(v, (int, float, list)), (k, type(v))
    table = format_digit_metrics(m)
    assert table.startswith("| metric") and "FD" in table
    two = format_digit_metrics(m, {"guided": m, "plain": {**m, "confident_fraction": 0.5}})
    assert two.splitlines()[0] == "| metric | guided | plain | real held-out |"
    row = next(l for l in two.splitlines() if l.startswith("| confident"))
    assert row.endswith(f"| {m['confident_fraction']:.3f} | 0.500 | {m['floor_confident_fraction']:.3f} |")
    assert "predicted classes 0-9 (plain)" in two


def test_metrics_noise_vs_real(clf, heldout_metrics, train_images):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(500, 1, 32, 32, generator=g) * 2 - 1
    m_noise = digit_metrics(noise, classifier=clf)
    # real training digits (a different set from the reference) are close in FD
    m_real = digit_metrics(train_images[:500], classifier=clf)
    assert m_noise["fd"] >= 10 * max(m_real["fd"], heldout_metrics["fd_floor"])
    assert m_noise["fd_ratio"] > 10
    assert m_real["confident_fraction"] > 0.85


def test_metrics_identical_images_and_copies(clf, heldout, train_images):
    same = heldout[0][:1].repeat(200, 1, 1, 1)
    m = digit_metrics(same, classifier=clf)
    assert m["class_entropy"] == 0.0
    assert max(m["class_histogram"]) == 200
    assert np.isfinite(m["fd"]) and m["fd"] > 0

    copies = train_images[torch.arange(0, 4000, 20)]  # 200 exact training digits
    mc = digit_metrics(copies, classifier=clf, real_train=train_images)
    assert mc["nn_ratio"] < 0.01
    assert mc["copied_fraction"] > 0.99


def test_metrics_other_size_and_clamping(clf, heldout, train_images):
    x28 = load_mnist("heldout", image_size=28)[:300] * 1.5  # out of range: clamped
    # 32x32 references are resized to the samples' 28x28
    m = digit_metrics(x28, classifier=clf, real_reference=heldout[0], real_train=train_images)
    assert m["n"] == 300
    assert m["confident_fraction"] > 0.8
    assert m["fd_ratio"] < 3
