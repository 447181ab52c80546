"""Feature-space metrics against direct computations and limiting cases."""
import numpy as np
import pytest

from diffusionlab.evaluation.digits import feature_stats, frechet_distance
from diffusionlab.evaluation.metrics import density_coverage, fid_from_features, kid, precision_recall


def test_fid_from_features_is_the_frechet_distance_of_the_fitted_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), rng.normal(0.3, 1.2, size=(400, 8))
    assert np.isclose(fid_from_features(a, b), frechet_distance(*feature_stats(a), *feature_stats(b)))
    # closed form for isotropic Gaussians: |dmu|^2 + D (s1 - s2)^2 (large samples)
    big_a, big_b = rng.normal(size=(200000, 2)), rng.normal(1.0, 2.0, size=(200000, 2))
    assert abs(fid_from_features(big_a, big_b) - (2 * 1.0 + 2 * 1.0)) < 0.05


def test_kid_equals_the_unbiased_mmd_computed_pair_by_pair():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.5, 1, size=(25, 5))
    subsets = [(rng.choice(30, 10, replace=False), rng.choice(25, 10, replace=False)) for _ in range(4)]

    def k(a, b):
        return (a @ b / 5 + 1) ** 3
    vals = []
    for i, j in subsets:
        xs, ys = x[i], y[j]
        m = len(xs)
        kxx = sum(k(xs[p], xs[q]) for p in range(m) for q in range(m) if p != q) / (m * (m - 1))
        kyy = sum(k(ys[p], ys[q]) for p in range(m) for q in range(m) if p != q) / (m * (m - 1))
        kxy = sum(k(xs[p], ys[q]) for p in range(m) for q in range(m)) / (m * m)
        vals.append(kxx + kyy - 2 * kxy)
    mean, std = kid(x, y, subset_indices=subsets)
    assert np.isclose(mean, np.mean(vals)) and np.isclose(std, np.std(vals))
    # the same distribution: KID ~ 0 (unbiased); shifted: clearly positive
    same = kid(rng.normal(size=(600, 5)), rng.normal(size=(600, 5)), subsets=20, subset_size=300)
    assert abs(same[0]) < 3 * same[1] + 1e-3 and kid(x, y, subsets=10, subset_size=20)[0] > 0.05


def test_precision_recall_limits_and_a_hand_example():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # fakes cover half the real modes: precision 1, recall ~ 0.5
    real = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 50])
    fake = rng.normal(size=(400, 2))
    p, r = precision_recall(real, fake)
    assert p > 0.95 and 0.4 < r < 0.55
    # hand example on a line, k = 1: reals 0, 1, 2 have radii 1, 1, 1
    real = np.array([[0.0], [1.0], [2.0]])
    fake = np.array([[0.5], [2.9], [3.5], [10.0]])
    p, _ = precision_recall(real, fake, k=1)
    assert p == 0.5  # 0.5 and 2.9 inside, 3.5 and 10 outside


def test_density_and_coverage_limits_and_a_hand_example():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 3))
    d, c = density_coverage(x, x + 100.0)
    assert d == 0.0 and c == 0.0
    d, c = density_coverage(x, rng.normal(size=(2000, 3)))
    assert 0.8 < d < 1.2 and c > 0.9
    real = np.array([[0.0], [1.0], [2.0]])          # k = 1: radii 1, 1, 1
    fake = np.array([[0.5], [10.0]])                # 0.5 lies in the balls of 0 and 1
    d, c = density_coverage(real, fake, k=1)
    assert d == pytest.approx(2 / (1 * 2)) and c == pytest.approx(2 / 3)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="N, D"):
        kid(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
