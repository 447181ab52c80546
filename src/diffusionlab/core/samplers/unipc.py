"""UniPC (Zhao et al. 2023): the unified predictor UniP-p and corrector UniC-p, data-prediction
form, B(h) = h ('bh1') or e^h - 1 ('bh2'), in sigma-space (alpha = 1, lambda = -log sigma).

With x0 predictions m_k at lambda_k (newest m_0), step size h = lambda' - lambda_0 and
r_k = (lambda_k - lambda_0) / h (negative for past points):

    predictor  x'  = (sigma'/sigma) x + (1 - e^-h) m_0 - B(h) sum_k a_k (m_k - m_0) / r_k
    corrector  x'c = (sigma'/sigma) x + (1 - e^-h) m_0 - B(h) [sum_k c_k (m_k - m_0) / r_k + c_p (m' - m_0)]

where m' = D(x', sigma') is the next step's model call (so the corrector is free: it raises the
order by one without extra calls), and the coefficient vectors solve R a = g (UniP) and
R c = g (UniC) with R_{ij} = r_j^(i-1) and g_i = (i! phi_{i+1}(-h)) h-scaled / B(h), the
paper's Eq. (8) / Algorithm 2. Order 2's predictor uses a = 1/2 and order 1's corrector c = 1/2,
as in the paper. The model output at the uncorrected point is kept for the history (the
paper's design; evaluating at the corrected point would cost a call).
"""
from __future__ import annotations

import math

import torch

from ._common import as_floats, batch_sigma, check_finite_start, emit, lam, step_order


def _coefficients(rks: list[float], h: float, variant: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(R, g, B(h)) for points r_1..r_{p-1} plus r_p = 1, in float64."""
    hh = -h
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    p = len(rks)
    R = torch.tensor([[r ** (i) for r in rks] for i in range(p)], dtype=torch.float64)
    g = []
    h_phi = math.expm1(hh) / hh - 1   # h phi_2 scaled; recursion phi_{k+1} = (phi_k - 1/k!) / h
    fact = 1
    for i in range(1, p + 1):
        g.append(h_phi * fact / b_h)
        fact *= i + 1
        h_phi = h_phi / hh - 1 / fact
    return R, torch.tensor(g, dtype=torch.float64), b_h


def _update(x, sigma, sigma_next, hist, order, variant, new=None):
    """Predictor (new=None) or corrector (new = model output at sigma_next) of order ``order``
    from (sigma, x) with history hist = [(lambda_k, m_k)] newest last (hist[-1] is at sigma)."""
    lam0, m0 = hist[-1]
    h = lam(sigma_next) - lam0
    base = (sigma_next / sigma) * x - math.expm1(-h) * m0
    past = [hist[-(k + 1)] for k in range(1, order)] if order > 1 else []
    rks = [(lk - lam0) / h for lk, _ in past]
    diffs = [(mk - m0) / rk for (_, mk), rk in zip(past, rks)]
    R, g, b_h = _coefficients(rks + [1.0], h, variant)
    if new is None:
        if not diffs:
            return base
        a = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], g[:-1]).tolist()
        return base - b_h * sum(ak * dk for ak, dk in zip(a, diffs))
    c = [0.5] if order == 1 else torch.linalg.solve(R, g).tolist()
    res = sum(ck * dk for ck, dk in zip(c[:-1], diffs)) if diffs else 0
    return base - b_h * (res + c[-1] * (new - m0))


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 order: int = 3, variant: str = "bh2", corrector: bool = True,
                 lower_order_final: bool = True):
    """UniPC-``order`` (1-3) with the UniC corrector (``corrector=False``: UniP alone). One call
    per step. The final step to 0 returns the last x0 prediction (no corrector after it)."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    s = as_floats(sigmas)
    check_finite_start(s, "unipc")
    n = len(s) - 1
    hist: list = []
    prev = None  # (x before the last predictor step, its sigma, the order used)
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, batch_sigma(x, sigma), cond)
        if corrector and prev is not None:
            x_prev, sigma_prev, o_prev = prev
            x = _update(x_prev, sigma_prev, sigma, hist, o_prev, variant, new=denoised)
        hist = (hist + [(lam(sigma), denoised)])[-order:]
        if sigma_next == 0:
            x = denoised
        else:
            o = step_order(i, n, order, len(hist) - 1, lower_order_final)
            prev = (x, sigma, o)
            x = _update(x, sigma, sigma_next, hist, o, variant)
        emit(callback, i, x, sigma, sigma_next, denoised)
    return x
