"""Randomness enters the library only here: explicit ``torch.Generator`` draws, and the one seed
helper for image sampling.

Every draw takes ``generator``: a ``torch.Generator`` (the numbers are drawn on the generator's
own device, then moved to ``device``, so a CPU generator gives the same numbers whatever device
the model runs on), a list with one generator per sample (``randn``: sample i draws only from
generator i, so it is the same whatever the batch size), or None. **None is the documented
fallback**: torch's global RNG of ``device``, reproducible only under ``torch.manual_seed``.
Library code that needs reproducibility (the trainer, the CLI, the demo, evaluation) always
passes a generator; None exists for interactive use and the seed tutorials' helpers.

``per_sample_generators(seed, indices, *keys)`` is the one mapping from a seed to generators,
one per sample index. Without keys it is the image-sampling stream: ``sample``, ``eval``, the
demo, the pipelines, the trainer's sample grids and ``dl.sample(..., seed=)`` all use it, so the
same seed draws the same image i everywhere. With keys (a stream name and, for training, the
step) it is a separate stream per (seed, keys, index), hashed so that streams never overlap:
the trainer draws sample i of step k's global batch from ``(seed, "train", k, i)`` (noise,
sigma / t, flips, conditioning dropout), which is what makes N processes that each draw their
share of the global batch equal one process; likelihood probes use ``(seed, "probe", i)``;
``stream_seed(seed, *keys)`` gives the integer seed of such a stream (the data order's
permutation of epoch e is ``stream_seed(seed, "order", e)``).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch

SEED_STRIDE = 1_000_003  # seed s, sample i -> generator seed s * SEED_STRIDE + i


def stream_seed(seed: int, *keys) -> int:
    """A 63-bit seed for the stream named by ``(seed, *keys)`` (keys: ints and strings)."""
    digest = hashlib.blake2b(repr((int(seed), *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def per_sample_generators(seed: int, indices: Iterable[int], *keys, device="cpu") -> list[torch.Generator]:
    """One generator per sample index. No keys: sample i of seed s uses ``s * 1_000_003 + i``
    (image sampling); with keys: ``stream_seed(s, *keys, i)`` (module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if keys:
        return [torch.Generator(device=device).manual_seed(stream_seed(seed, *keys, int(i))) for i in indices]
    return [torch.Generator(device=device).manual_seed(seed * SEED_STRIDE + int(i)) for i in indices]


def _device(generator, device):
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _draw(draw, shape: Sequence[int], generator, device, **kw) -> torch.Tensor:
    """``draw(shape, generator=, device=, **kw)`` for one generator, None, or one per sample."""
    shape = tuple(shape)
    target = torch.device(device) if device is not None else None
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([draw(shape[1:], generator=g, device=_device(g, device), **kw).to(target or _device(g, device))
                            for g in generator])
    dev = _device(generator, device)
    return draw(shape, generator=generator, device=dev, **kw).to(target or dev)


def randn(shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device`` (see the module docstring for ``generator``)."""
    return _draw(torch.randn, shape, generator, device, dtype=dtype)


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """``randn(x.shape)`` with x's dtype, on x's device."""
    return randn(x.shape, generator, x.device, x.dtype)


def rand(shape: Sequence[int], generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws (one generator, one per sample, or None)."""
    return _draw(torch.rand, shape, generator, device, dtype=dtype)


def randint(high: int, shape: Sequence[int], generator=None, device=None) -> torch.Tensor:
    """Uniform integers in [0, high) (one generator, one per sample, or None)."""
    return _draw(lambda shp, **kw: torch.randint(0, high, shp, **kw), shape, generator, device)
