"""Feature-space metrics shared by every extractor (digit classifier, Inception, a user module).

All take features as [N, D] arrays (numpy or torch) and compute in float64.

- ``fid_from_features``: Frechet distance of Gaussians fitted to the two sets (Heusel et al. 2017).
- ``kid``: kernel inception distance (Binkowski et al. 2018): the unbiased MMD^2 with the
  polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets, with its std over
  subsets (the torchmetrics / torch-fidelity definition). Subsets may be given explicitly.
- ``precision_recall``: Kynkaanniemi et al. 2019: the real (fake) manifold is the union of balls
  around each real (fake) feature with radius its distance to its k-th nearest neighbour
  (k = 3); precision = fraction of fakes inside the real manifold, recall = fraction of reals
  inside the fake manifold.
- ``density_coverage``: Naeem et al. 2020: density = (1 / kM) sum_j #{i : fake_j in B(real_i, r_i)},
  coverage = fraction of reals whose ball contains at least one fake (k = 5).
- ``psnr`` and ``ssim``: per-image distortion of a reconstruction against its reference (super-
  resolution), SSIM as scikit-image computes it with Gaussian weights.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import UserError


def _np(f) -> np.ndarray:
    a = np.asarray(f.detach().cpu() if torch.is_tensor(f) else f, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {a.shape}")
    return a


def fid_from_features(real, fake) -> float:
    mu1, s1 = feature_stats(_np(real))
    mu2, s2 = feature_stats(_np(fake))
    return frechet_distance(mu1, s1, mu2, s2)


def _poly_mmd2(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    kxx = (x @ x.T * gamma + coef0) ** degree
    kyy = (y @ y.T * gamma + coef0) ** degree
    kxy = (x @ y.T * gamma + coef0) ** degree
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
        coef0: float = 1.0, seed: int = 0, subset_indices=None) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over subsets. ``subset_indices``:
    an explicit list of (real_idx, fake_idx) pairs (overrides subsets / subset_size / seed);
    otherwise each subset draws ``subset_size`` rows of each set without replacement from a
    numpy Generator seeded with ``seed``. ``gamma`` defaults to 1 / D. The std is the
    population std over subsets (torchmetrics' convention)."""
    x, y = _np(real), _np(fake)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    if subset_indices is None:
        size = min(subset_size, len(x), len(y))
        if size < 2:
            raise UserError("KID needs at least 2 samples in each set")
        rng = np.random.default_rng(seed)
        subset_indices = [(rng.choice(len(x), size, replace=False), rng.choice(len(y), size, replace=False))
                          for _ in range(subsets)]
    vals = np.array([_poly_mmd2(x[np.asarray(i)], y[np.asarray(j)], degree, gamma, coef0) for i, j in subset_indices])
    return float(vals.mean()), float(vals.std())


def _kth_nn_radius(a: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of each row of ``a`` to its k-th nearest other row."""
    t = torch.from_numpy(a)
    out = []
    for i in range(0, len(a), chunk):
        d = torch.cdist(t[i:i + chunk], t)
        out.append(d.kthvalue(k + 1, dim=1).values)   # +1: the row itself at distance 0
    return torch.cat(out).numpy()


def _in_balls(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """[Nq, Nc] boolean (as counts per query, and any) membership of queries in the balls."""
    q, c, r = (torch.from_numpy(v) for v in (queries, centres, radii))
    counts = []
    for i in range(0, len(q), chunk):
        counts.append((torch.cdist(q[i:i + chunk], c) <= r[None]).sum(1))
    return torch.cat(counts).numpy()


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    x, y = _np(real), _np(fake)
    if min(len(x), len(y)) <= k:
        raise UserError(f"precision/recall with k = {k} needs more than {k} samples per set")
    precision = float((_in_balls(y, x, _kth_nn_radius(x, k)) > 0).mean())
    recall = float((_in_balls(x, y, _kth_nn_radius(y, k)) > 0).mean())
    return precision, recall


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    x, y = _np(real), _np(fake)
    if len(x) <= k:
        raise UserError(f"density/coverage with k = {k} needs more than {k} real samples")
    r = _kth_nn_radius(x, k)
    density = float(_in_balls(y, x, r).sum() / (k * len(y)))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    nearest_fake = torch.cat([torch.cdist(tx[i:i + 1024], ty).min(1).values for i in range(0, len(x), 1024)])
    coverage = float((nearest_fake.numpy() <= r).mean())
    return density, coverage


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (rows = samples, unbiased) as float64 numpy."""
    f = np.asarray(feats.detach().cpu() if torch.is_tensor(feats) else feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {f.shape}")
    mu = f.mean(axis=0)
    sigma = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros((f.shape[1], f.shape[1]))
    return mu, np.atleast_2d(sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))``.

    As in pytorch-fid: ``scipy.linalg.sqrtm`` of the product; if that is not finite
    (near-singular covariances) ``eps * I`` is added to both covariances; tiny imaginary
    parts from numerical error are discarded (a large one raises ``ValueError``). The
    result is clamped at 0 (round-off can make identical statistics give -1e-12).
    """
    from scipy import linalg

    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError("mean vectors / covariances have different shapes")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    fd = diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0))


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image [N] in dB of ``x`` against ``ref`` ([N, C, H, W];
    ``data_range`` 2 for images in [-1, 1]): 10 log10(range^2 / MSE)."""
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image [N] (Wang et al. 2004): Gaussian window of std 1.5 and
    radius 5 (11 x 11), K1 0.01, K2 0.03, population statistics, averaged over the positions
    where the window fits inside the image and over channels - the same as scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=...)`` (tests/test_metrics.py)."""
    import torch.nn.functional as F

    x, ref = x.double(), ref.double()
    c = x.shape[1]
    r = int(3.5 * sigma + 0.5)
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, 2 * r + 1, 2 * r + 1)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(ref)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(ref * ref) - my ** 2, blur(x * ref) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
