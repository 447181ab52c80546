"""Randomness enters the library only here: explicit ``torch.Generator`` draws, and the one seed
helper for image sampling.

Every draw takes ``generator``: a ``torch.Generator`` (the numbers are drawn on the generator's
own device, then moved to ``device``, so a CPU generator gives the same numbers whatever device
the model runs on), a list with one generator per sample (``randn``: sample i draws only from
generator i, so it is the same whatever the batch size), or None. **None is the documented
fallback**: torch's global RNG of ``device``, reproducible only under ``torch.manual_seed``.
Library code that needs reproducibility (the trainer, the CLI, the demo, evaluation) always
passes a generator; None exists for interactive use and the seed tutorials' helpers.

``per_sample_generators(seed, indices)`` is the one mapping from a user's ``--seed`` to the
generators of image sampling: ``sample``, ``eval``, the demo, the trainer's sample grids and
evaluations, and ``dl.sample(..., seed=)`` all use it, so the same seed draws the same image i
everywhere. Data order, likelihood probes and the trainer's training draws keep their own
streams (seeded from the run's seed in their own modules).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

SEED_STRIDE = 1_000_003  # seed s, sample i -> generator seed s * SEED_STRIDE + i


def per_sample_generators(seed: int, indices: Iterable[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample index: sample i of seed s uses ``s * 1_000_003 + i``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return [torch.Generator(device=device).manual_seed(seed * SEED_STRIDE + int(i)) for i in indices]


def _device(generator, device):
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def randn(shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device`` (see the module docstring for ``generator``)."""
    shape = tuple(shape)
    target = torch.device(device) if device is not None else None
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        out = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=_device(g, device))
                           .to(target or _device(g, device)) for g in generator])
        return out
    dev = _device(generator, device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=dev).to(target or dev)


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """``randn(x.shape)`` with x's dtype, on x's device."""
    return randn(x.shape, generator, x.device, x.dtype)


def rand(shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws (one generator or None)."""
    dev = _device(generator, device)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=dev).to(device or dev)


def randint(high: int, shape: Sequence[int], generator=None, device=None) -> torch.Tensor:
    """Uniform integers in [0, high) (one generator or None)."""
    dev = _device(generator, device)
    return torch.randint(0, high, tuple(shape), generator=generator, device=dev).to(device or dev)
