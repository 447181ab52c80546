"""Few-step generation on the one trainer (``TrainConfig.distill``; the losses are ``core.distill``).

- ``distill_config(teacher, "consistency", steps_to)``: a full fine-tuning run of the teacher (the
  student starts from its EMA weights, ``training.finetune``) whose loss is
  ``core.distill.ConsistencyLoss``. An unconditional teacher gets ECT-style consistency tuning (the
  student is its own target); a class or text teacher gets LCM-style consistency distillation with
  its guidance distilled in: the student's network gains a guidance-scale input
  (``nn.layers.GuidanceEmbedding``, zero at the start, so the student starts as the teacher) and
  each pair's second point comes from one teacher DDIM step under classifier-free guidance at a
  per-sample scale s ~ U[``GUIDANCE_RANGE``]. The student's process config has ``consistency`` set
  (its denoiser is f with f(x, sigma_min) = x); it records the consistency sampler, ``steps_to``
  steps and the grid (``CONSISTENCY_MID``).
- ``progressive_stages`` / ``stage_config``: progressive distillation (Salimans & Ho 2022) halves
  the steps per stage, from the teacher's DDIM grid of ``start_steps`` down to ``steps_to``; each stage
  is one run on the trainer whose teacher is the previous stage's student (the `distill` command
  runs them in turn, in OUT/stages/N, the last one in OUT). The grids are nested: stage k's grid is
  every other point of its teacher's, all subsampled from the teacher's ``start_steps`` grid.
- ``consistency_training``: the same consistency loss from a random initialisation, without a
  teacher (``train --few-step consistency``: consistency training, Song et al. 2023 / iCT).

Defaults (``DISTILL_DEFAULTS``) were chosen for the CPU budgets of the demo models (bench/distill.py).
"""
from __future__ import annotations

import dataclasses
import math

from ..errors import UserError
from .config import DistillConfig, TrainConfig

METHODS = ("consistency", "progressive")
DEFAULT_STEPS_TO = {"consistency": 2, "progressive": 4}
PD_START_STEPS = 16
"""Progressive distillation starts from the teacher's DDIM grid of this many steps (two stages to
4 steps). Salimans & Ho start from thousands of steps; on a CPU budget each halving stage costs as
much as the first, so the chain is kept short."""
GUIDANCE_RANGE = (1.0, 5.0)
"""The CFG scales s = 1 + w a guidance-distilled student learns (s ~ U[1, 5] per sample; the demo
records 3). LCM draws w in [2, 14] for Stable Diffusion; a small model spends its capacity on the
range users ask for."""
DISTILL_LR = 2e-4
DISTILL_DEFAULTS = dict(lr=DISTILL_LR, warmup_steps=0, p_uncond=0.1, checkpoint_every=100, val_every=100, n_val=128,
                        log_every=10, out_dir="runs/distill")
"""lr 2e-4 (ECT tunes at 1e-4 with batch 128; the demo network trained at 5e-4), no warm-up (the
student starts at its teacher), conditioning dropout 0.1 so the null condition stays a guided
student too (the demo trained its null path at 0.5), 128 validation images (a validation pass runs
the teacher as well: on the demo model 512 cost as much as 8 training steps)."""


def check_steps_to(steps: int, param: str = "steps_to") -> int:
    if not isinstance(steps, int) or steps < 1 or steps & (steps - 1):
        raise UserError(f"the student's steps are a power of two (1, 2, 4, 8, ...), got {steps}", param=param)
    return steps


def load_teacher(teacher: str):
    """The teacher as a denoiser (EMA weights), refused if it cannot teach."""
    from ..models.loading import load_denoiser

    den = load_denoiser(teacher)
    if den.boundary is not None:
        raise UserError(f"{teacher} is a consistency model already: distil its teacher instead", param="ckpt")
    return den


def _guided(den) -> bool:
    return den.info.cond.kind in ("class", "text")


def distill_config(teacher: str, method: str = "consistency", steps_to: int | None = None, *,
                   guidance_range: tuple | None = GUIDANCE_RANGE, q: float = 2.0, stage_steps: int = 100,
                   huber_c: float | None = None, sigmas=None, teacher_sigmas=None, **fields) -> TrainConfig:
    """The ``TrainConfig`` of a distillation run of ``teacher`` (module docstring); ``fields``: any
    training field (``TrainConfig``) but what the student takes from its teacher. For progressive,
    ``sigmas`` / ``teacher_sigmas`` are the stage's grids (``progressive_stages``)."""
    from ..core.schedules import get_sigmas
    from .finetune import finetune_config

    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}", param="method")
    steps_to = check_steps_to(DEFAULT_STEPS_TO[method] if steps_to is None else steps_to)
    den = load_teacher(teacher)
    info = den.info
    cfg = finetune_config(teacher, full=True, **{**DISTILL_DEFAULTS, **fields})
    guided = _guided(den) and guidance_range is not None
    if method == "consistency":
        sigmas = get_sigmas("consistency", steps_to, info.sigma_min, info.finite_sigma_max()).tolist()
        teacher_sigmas = None
    elif sigmas is None or teacher_sigmas is None:
        sigmas, teacher_sigmas = progressive_stages(den, steps_to, 2 * steps_to)[0]
    model = dataclasses.replace(cfg.model, guidance_input=True) if guided or info.cond.guidance_input else cfg.model
    d = DistillConfig(method=method, teacher=str(teacher), teacher_sha256=cfg.finetune.base_sha256, steps_to=steps_to,
                      sigmas=tuple(float(s) for s in sigmas),
                      teacher_sigmas=tuple(float(s) for s in teacher_sigmas) if teacher_sigmas is not None else None,
                      guidance_range=tuple(guidance_range) if guided else None, q=q, stage_steps=stage_steps,
                      huber_c=huber_c)
    return dataclasses.replace(cfg, model=model, diffusion=dataclasses.replace(cfg.diffusion,
                                                                              consistency=method == "consistency"),
                               sample_sampler="consistency" if method == "consistency" else "ddim",
                               sample_steps=steps_to, distill=d)


def progressive_stages(teacher, steps_to: int, start_steps: int = PD_START_STEPS) -> list[tuple[list, list]]:
    """[(student grid, teacher grid)] of each halving stage from ``start_steps`` to ``steps_to``: every
    grid subsampled from the teacher's DDIM grid of ``start_steps`` steps (its measured grid for
    DDIM; a first sigma of inf becomes the largest finite one), so stage k's grid is every other
    point of its teacher's."""
    from ..core.sampling import resolve_sigmas

    check_steps_to(steps_to)
    check_steps_to(start_steps, "start_steps")
    if start_steps <= steps_to:
        raise UserError(f"progressive distillation halves the steps from start_steps ({start_steps}) down to "
                        f"steps_to ({steps_to}): start above it", param="start_steps")
    fine = resolve_sigmas(teacher, start_steps, sampler="ddim")
    if not math.isfinite(float(fine[0])):
        fine[0] = teacher.info.finite_sigma_max()
    out, n = [], start_steps
    while n > steps_to:
        out.append((fine[:: start_steps // (n // 2)].tolist(), fine[:: start_steps // n].tolist()))
        n //= 2
    return out


def stage_config(teacher: str, grids: tuple, out_dir: str, **kw) -> TrainConfig:
    """One progressive stage: ``grids`` = (student grid, teacher grid) from ``progressive_stages``."""
    sigmas, teacher_sigmas = grids
    return distill_config(teacher, "progressive", len(sigmas) - 1, sigmas=sigmas, teacher_sigmas=teacher_sigmas,
                          out_dir=out_dir, **kw)


def consistency_training(cfg: TrainConfig, q: float = 2.0, stage_steps: int = 100) -> TrainConfig:
    """``cfg`` as consistency training from scratch (no teacher): the consistency parameterisation,
    ``core.distill.ConsistencyLoss`` with the student as its own target, and the consistency
    sampler at 2 steps as the recorded default (the 'consistency' grid)."""
    if cfg.finetune is not None or cfg.classifier is not None or cfg.autoencoder is not None:
        raise UserError("consistency training trains a diffusion model from scratch", param="few_step")
    if cfg.cond in ("class", "text") and cfg.p_uncond:
        cfg = dataclasses.replace(cfg, guidance=1.0)  # no CFG: a consistency model is sampled as it is
    return dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, consistency=True),
                               sample_sampler="consistency", sample_steps=DEFAULT_STEPS_TO["consistency"],
                               distill=DistillConfig(method="consistency", steps_to=DEFAULT_STEPS_TO["consistency"],
                                                     q=q, stage_steps=stage_steps))


def student_network(cfg: TrainConfig, base):
    """The student's network: the teacher's (``base``, EMA weights), with a guidance-scale input
    added where the config asks for one (its last layer zero: the student starts as the teacher)."""
    from .setup import initial_network

    if not getattr(cfg.model, "guidance_input", False) or base.cond_spec.guidance_input:
        return base
    net = initial_network(cfg)  # seeded by the run's seed only: the new embedding is the same in every run
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_emb.") for k in missing):
        raise UserError(f"the student's network does not fit its teacher's weights ({missing or unexpected})",
                        param="ckpt")
    return net.train()


def distill_loss(cfg: TrainConfig, diffusion, device):
    """The run's loss (``core.distill``): the student's preconditioner from its process, its
    boundary at the process's smallest sigma, and the frozen teacher (EMA weights) where one is
    needed: distillation of a conditional model, and every progressive stage."""
    from ..core.distill import ConsistencyLoss, ProgressiveLoss

    d = cfg.distill
    den = diffusion.denoiser_for(diffusion.model)
    teacher = None
    if d.teacher is not None and (d.method == "progressive" or d.guidance_range is not None):
        teacher = load_teacher(d.teacher).to(device)
        teacher.requires_grad_(False)
    if d.method == "progressive":
        return ProgressiveLoss(den.precond, teacher, d.sigmas, d.teacher_sigmas, guidance=d.guidance_range)
    return ConsistencyLoss(den.precond, float(den.sigma_min), den.info.finite_sigma_max(), teacher=teacher,
                           guidance=d.guidance_range, q=d.q, stage_steps=d.stage_steps, c=d.huber_c)


__all__ = ["METHODS", "DISTILL_DEFAULTS", "GUIDANCE_RANGE", "PD_START_STEPS", "check_steps_to", "load_teacher",
           "distill_config", "progressive_stages", "stage_config", "consistency_training", "student_network", "distill_loss"]
