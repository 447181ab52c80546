"""Feature-space metrics against direct computations and limiting cases."""
import numpy as np
import pytest
import torch

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


class _Identity(__import__("torch").nn.Module):
    """A 'feature extractor' that returns its input: torchmetrics then sees our features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


@pytest.mark.bench
def test_fid_and_kid_equal_torchmetrics_on_the_same_features_and_subsets():
    torch = pytest.importorskip("torch")
    tm_fid = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics is in the bench venv (make bench-venv)")
    tm_kid = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(4)
    d = 16
    real = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) * 0.3
    fake = rng.normal(0.2, 1.1, size=(250, d)) @ rng.normal(size=(d, d)) * 0.3
    fid = tm_fid.FrechetInceptionDistance(feature=_Identity(d))
    fid.update(torch.from_numpy(real).float(), real=True)
    fid.update(torch.from_numpy(fake).float(), real=False)
    # same float32 features on both sides (torchmetrics receives float32 tensors)
    ours = fid_from_features(real.astype(np.float32), fake.astype(np.float32))
    assert np.isclose(ours, float(fid.compute()), rtol=1e-5), (ours, float(fid.compute()))

    kid_tm = tm_kid.KernelInceptionDistance(feature=_Identity(d), subsets=7, subset_size=100)
    kid_tm.update(torch.from_numpy(real).float(), real=True)
    kid_tm.update(torch.from_numpy(fake).float(), real=False)
    torch.manual_seed(123)  # torchmetrics draws its subsets with torch.randperm: replay them
    subsets = [(torch.randperm(300)[:100].numpy(), torch.randperm(250)[:100].numpy()) for _ in range(7)]
    torch.manual_seed(123)
    m_tm, s_tm = (float(v) for v in kid_tm.compute())
    m, s = kid(real.astype(np.float32), fake.astype(np.float32), subset_indices=subsets)
    assert np.isclose(m, m_tm, rtol=1e-4, atol=1e-7) and np.isclose(s, s_tm, rtol=1e-3, atol=1e-7), (m, m_tm, s, s_tm)


def test_psnr_and_ssim_equal_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    from diffusionlab.evaluation.metrics import psnr, ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    for i in range(3):
        ref = skm.structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=2.0)
        assert abs(float(ssim(a, b)[i]) - ref) < 1e-6
        assert abs(float(psnr(a, b)[i]) - skm.peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=2.0)) < 1e-4
    rgb = torch.rand(2, 3, 16, 16, generator=g)
    ref = skm.structural_similarity(rgb[0].numpy(), (rgb[0] * 0.8).numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, channel_axis=0)
    assert abs(float(ssim(rgb, rgb * 0.8, data_range=1.0)[0]) - ref) < 1e-5
    assert float(ssim(a, a).min()) == pytest.approx(1.0) and torch.isinf(psnr(a, a)).logical_not().all()
