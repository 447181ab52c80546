"""Few-step generation as losses of the one trainer: consistency (ECT / LCM) and progressive
distillation, in sigma-space over any process's preconditioned network.

A **consistency model** is a denoiser f(x, sigma) with an exact boundary f(x, sigma_b) = x
(``denoiser.boundary_coefficients``, sigma_b the process's smallest sigma) trained so that every
point of one probability-flow trajectory maps to the same end (Song et al. 2023). One pair a sample:

    t   ~ exp(P_mean + P_std xi)         (ECT: P_mean = -1.1, P_std = 2), clipped to [sigma_b, sigma_max]
    r   = max(sigma_b, t (1 - n(t) / q^(stage + 1))),  n(t) = 1 + 8 sigmoid(-t)       (ECT's mapping)
    x_t = x0 + t eps
    x_r = x0 + r eps                                      (consistency tuning / training: ECT, iCT)
        | x_t + (r / t - 1)(x_t - D_w(x_t, t))            (distillation: ONE guided Euler = DDIM step of
                                                           the teacher, LCM, with D_w = D_u + s (D_c - D_u))
    loss = w(t, r) rho(f(x_t, t) - sg[f(x_r, r)]),  w = 1 / (t - r),  rho(d) = sqrt(|d|^2 + c^2) - c

(Geng et al. 2024, "Consistency Models Made Easy" = ECT, Eq. 6-8 and its code; Luo et al. 2023,
LCM, Alg. 1 with the guidance scale s drawn per sample and fed to the student, ``Cond.guidance``;
Song & Dhariwal 2023, iCT, for the pseudo-Huber c = 0.00054 sqrt(d) and w = 1 / (t - r)). The target
is the student itself under ``torch.no_grad`` (stop-gradient, no EMA teacher: ECT, iCT), evaluated
with the same noise and the same dropout mask (the RNG state is replayed); f(x_r, sigma_b) = x_r
exactly, so the network is never called there. ``stage`` counts ``stage_steps`` optimizer steps
(``at_step``, from the trainer): the gap t - r halves each stage for q = 2, which is ECT's
tightening discretisation (stage 0 already has a consistency target for t above ln 7). With r =
sigma_b for every t (q -> 1, stage 0) the loss is the denoising loss of the teacher's pretraining.

**Progressive distillation** (Salimans & Ho 2022, Alg. 2, in sigma-space: DDIM = the Euler step of
the probability-flow ODE): the student learns in one DDIM step over an interval of its grid what
two teacher DDIM steps do over the two halves,

    x' = D(x, s) + (s' / s)(x - D(x, s)),   x'' = D(x', s') + (s'' / s')(x' - D(x', s')),
    x~ = (s x'' - s'' x) / (s - s'')        (the x0 whose DDIM step s -> s'' lands on x''; D(x', s') if s'' = 0)
    loss = max(1 / s^2, 1) |D_student(x, s) - x~|^2          ("truncated SNR" weighting, Sec. 4)

on the student's grid s = grid[i], s'' = grid[i + 1] with the teacher's midpoint s' (a grid of twice
the steps). A conditional teacher is guided (per-sample scale, given to the student as input).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from . import rng
from .cond import Cond, as_cond
from .denoiser import append_dims, run_network
from .losses import StatelessLoss, unpack
from .protocol import info_of
from ..errors import UserError

ECT_P_MEAN, ECT_P_STD = -1.1, 2.0   # ECT / iCT: ln t ~ N(-1.1, 2^2)
ECT_K, ECT_B = 8.0, 1.0             # ECT's n(t) = 1 + k sigmoid(-b t)


def huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054 sqrt(d) for data of dimension d (Song & Dhariwal 2023)."""
    return 0.00054 * math.sqrt(dim)


def ect_r(t: torch.Tensor, stage: int, q: float, sigma_b: float) -> torch.Tensor:
    """ECT's second point r(t) = max(sigma_b, t (1 - n(t) / q^(stage + 1))) with n(t) = 1 + 8 sigmoid(-t):
    (t - r) / t = n(t) / q^(stage + 1) where that is below 1 - sigma_b / t, else r = sigma_b."""
    n = 1 + ECT_K * torch.sigmoid(-ECT_B * t)
    return torch.minimum(t, (t * (1 - n / q ** (stage + 1))).clamp_min(sigma_b))


def pseudo_huber(delta: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(|delta|^2 + c^2) - c per sample, over the whole sample (not element-wise; iCT, ECT)."""
    return (delta.flatten(1).float().pow(2).sum(1) + c * c).sqrt() - c


def euler_to(denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One DDIM (probability-flow Euler) step from sigma to sigma_next: D + (sigma_next / sigma)(x - D)."""
    ratio = append_dims((sigma_next / sigma).to(x.dtype), x.dim())
    return denoised + ratio * (x - denoised)


def guided(teacher, x: torch.Tensor, sigma: torch.Tensor, cond, scale: torch.Tensor | None) -> torch.Tensor:
    """The teacher's prediction under classifier-free guidance with a per-sample ``scale`` s [B]:
    D_u + s (D_c - D_u) in one batched call; a guidance-distilled teacher takes s as its input.
    ``scale`` None or an unconditional batch: the teacher unguided."""
    cond = as_cond(cond)
    if scale is None or cond.is_empty:
        return teacher(x, sigma, cond if not cond.is_empty else None)
    if info_of(teacher).cond.guidance_input:
        return teacher(x, sigma, cond.with_guidance(scale))
    plain = dataclasses.replace(cond, guidance=None)
    both = teacher(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([plain, plain.as_null()]))
    c, u = both.chunk(2)
    return u + append_dims(scale.to(x.dtype), x.dim()) * (c - u)


class _ReplayRNG:
    """Replays the global RNG (CPU, and the device's) so a second forward draws the same dropout
    masks as the first; afterwards the RNG continues from where the first forward left it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.start = self._get()

    def _get(self):
        return torch.get_rng_state(), (torch.cuda.get_rng_state() if self.cuda else None)

    def _set(self, state) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1])

    def __enter__(self):
        self.after = self._get()
        self._set(self.start)

    def __exit__(self, *exc):
        self._set(self.after)


class _FewStepLoss(StatelessLoss):
    """What both losses share: the student's forward, the guidance-scale draw, the step counter."""

    def __init__(self, precond, *, teacher=None, guidance: tuple | None = None):
        if guidance is not None:
            lo, hi = (float(v) for v in guidance)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise UserError(f"the guidance range is 0 <= low <= high, got {guidance}", param="guidance_range")
            guidance = (lo, hi)
        self.precond, self.teacher, self.guidance = precond, teacher, guidance
        self.step, self.stats = 0, {}

    def at_step(self, step: int) -> None:
        """The trainer's optimizer step (what stages count); resume sets it from the checkpoint."""
        self.step = int(step)

    def scales(self, n: int, generator, device, fixed=None) -> torch.Tensor | None:
        """The per-sample guidance scale s ~ U[low, high] (None: no guidance distilled)."""
        if self.guidance is None:
            return None
        if fixed is not None:
            return torch.as_tensor(fixed, dtype=torch.float32, device=device).expand(n)
        lo, hi = self.guidance
        return lo + (hi - lo) * rng.rand((n,), generator, device)

    def student(self, net, x, sigma, cond, scale, autocast, boundary=None):
        c = as_cond(cond)
        if scale is not None and not c.is_empty:
            c = c.with_guidance(scale)
        return run_network(net, self.precond, x, sigma, c, autocast, boundary)[0]


class ConsistencyLoss(_FewStepLoss):
    """ECT consistency tuning / training, or LCM-style consistency distillation with a ``teacher``
    (module docstring). ``boundary`` sigma_b and ``sigma_max`` bound t; ``q`` and ``stage_steps``
    the tightening; ``c`` the pseudo-Huber constant (None: ``huber_c`` of the data's dimension);
    ``guidance`` (low, high): the range of s distilled into the student (a conditional teacher)."""

    def __init__(self, precond, boundary: float, sigma_max: float, *, teacher=None, guidance=None, q: float = 2.0,
                 stage_steps: int = 200, c: float | None = None, p_mean: float = ECT_P_MEAN, p_std: float = ECT_P_STD):
        super().__init__(precond, teacher=teacher, guidance=guidance)
        if not q > 1:
            raise UserError(f"q (the gap's divisor per stage) must be above 1, got {q}", param="q")
        if stage_steps < 1:
            raise UserError(f"stage_steps must be at least 1, got {stage_steps}", param="stage_steps")
        self.boundary, self.sigma_max = float(boundary), float(sigma_max)
        self.q, self.stage_steps, self.c = float(q), int(stage_steps), c
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    @property
    def stage(self) -> int:
        return self.step // self.stage_steps

    def pairs(self, n: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, r) [n] float64 of the current stage."""
        t = (self.p_mean + self.p_std * rng.randn((n,), generator, device, torch.float64)).exp()
        t = t.clamp(self.boundary, self.sigma_max)
        return t, ect_r(t, self.stage, self.q, self.boundary)

    def target_point(self, x0, x_t, t, r, eps, cond, scale):
        """x_r: on the same noise (no teacher), or one guided teacher step from x_t."""
        if self.teacher is None:
            return x0 + append_dims(r.to(x0.dtype), x0.dim()) * eps
        return euler_to(guided(self.teacher, x_t, t, cond, scale), x_t, t, r)

    def __call__(self, net, x, cond=None, generator=None, t=None, r=None, eps=None, scale=None, autocast=None,
                 train: bool = True):
        """Per-sample loss [B]; ``t`` / ``r`` / ``eps`` / ``scale`` fix the draw (tests)."""
        x0, cond = unpack(x, cond)
        n, dev = x0.shape[0], x0.device
        if t is None:
            t, r = self.pairs(n, generator, dev)
        t = torch.as_tensor(t, dtype=torch.float64, device=dev).expand(n)
        r = ect_r(t, self.stage, self.q, self.boundary) if r is None else \
            torch.as_tensor(r, dtype=torch.float64, device=dev).expand(n)
        if bool((r > t).any()) or bool((r < self.boundary).any()):
            raise ValueError("a consistency pair needs sigma_b <= r <= t")
        eps = rng.randn(tuple(x0.shape), generator, dev, x0.dtype) if eps is None else eps
        s = self.scales(n, generator, dev, scale)
        x_t = x0 + append_dims(t.to(x0.dtype), x0.dim()) * eps
        replay = _ReplayRNG(dev)
        f_t = self.student(net, x_t, t, cond, s, autocast, self.boundary)
        with torch.no_grad(), replay:
            x_r = self.target_point(x0, x_t, t, r, eps, cond, s)
            inside = r > self.boundary
            f_r = x_r.clone()
            if bool(inside.any()):  # f(x_r, sigma_b) = x_r: the network is never called at the boundary
                k = inside.nonzero().flatten()
                sub = cond[k] if cond is not None and not as_cond(cond).is_empty else cond
                f_r[k] = self.student(net, x_r[k], r[k], sub, None if s is None else s[k], autocast,
                                      self.boundary).to(x_r.dtype)
        c = self.c if self.c is not None else huber_c(x0[0].numel())
        gap = (t - r).to(torch.float32)
        loss = pseudo_huber(f_t - f_r, c) / gap.clamp_min(1e-12)
        loss = torch.where(gap > 0, loss, torch.zeros_like(loss))  # t = r = sigma_b: f = x on both sides
        self.stats = {"gap": (gap / t.float()).detach()}
        return loss


class ProgressiveLoss(_FewStepLoss):
    """Progressive distillation of ``teacher`` onto the student's ``grid`` (N + 1 sigmas ending in 0)
    with the teacher's midpoints ``teacher_grid`` (2N + 1 sigmas, ``teacher_grid[::2] == grid``);
    see the module docstring."""

    def __init__(self, precond, teacher, grid, teacher_grid, *, guidance=None):
        super().__init__(precond, teacher=teacher, guidance=guidance)
        self.grid = torch.as_tensor(grid, dtype=torch.float64)
        self.teacher_grid = torch.as_tensor(teacher_grid, dtype=torch.float64)
        if len(self.teacher_grid) != 2 * len(self.grid) - 1 or not torch.equal(self.teacher_grid[::2], self.grid):
            raise ValueError("the teacher's grid must be the student's with one midpoint in every interval")
        if not bool(torch.isfinite(self.grid).all()) or float(self.grid[-1]) != 0:
            raise ValueError("a progressive-distillation grid is finite and ends in 0")

    def target(self, x, sigma, mid, sigma_next, cond, scale) -> torch.Tensor:
        """x~: the x0 whose DDIM step sigma -> sigma_next lands where two teacher DDIM steps land."""
        x1 = euler_to(guided(self.teacher, x, sigma, cond, scale), x, sigma, mid)
        d1 = guided(self.teacher, x1, mid, cond, scale)
        x2 = euler_to(d1, x1, mid, sigma_next)
        last = append_dims(sigma_next == 0, x.dim())
        sg, sn = (append_dims(v.to(x.dtype), x.dim()) for v in (sigma, sigma_next))
        return torch.where(last, d1, (sg * x2 - sn * x) / (sg - sn))

    def __call__(self, net, x, cond=None, generator=None, i=None, eps=None, scale=None, autocast=None,
                 train: bool = True):
        """Per-sample loss [B]; ``i`` (the grid interval) / ``eps`` / ``scale`` fix the draw (tests)."""
        x0, cond = unpack(x, cond)
        n, dev = x0.shape[0], x0.device
        steps = len(self.grid) - 1
        i = rng.randint(steps, (n,), generator, dev) if i is None else torch.as_tensor(i, device=dev).long().expand(n)
        eps = rng.randn(tuple(x0.shape), generator, dev, x0.dtype) if eps is None else eps
        s = self.scales(n, generator, dev, scale)
        g, tg = self.grid.to(dev), self.teacher_grid.to(dev)
        sigma, mid, sigma_next = g[i], tg[2 * i + 1], g[i + 1]
        x_t = x0 + append_dims(sigma.to(x0.dtype), x0.dim()) * eps
        with torch.no_grad():
            target = self.target(x_t, sigma, mid, sigma_next, cond, s)
        pred = self.student(net, x_t, sigma, cond, s, autocast)
        weight = (1 / sigma ** 2).clamp_min(1.0).to(torch.float32)
        return (pred - target).flatten(1).float().pow(2).mean(1) * weight
