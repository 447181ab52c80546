"""Preference pairs from a model and a reward (``diffusionlab make-pairs``): automatic feedback in
place of human labels, written as a pairs folder (``data.pairs``) that `diffusionlab dpo` trains on.

Candidates are sampled two at a time under the same request (a prompt or a class, cycled over
the requests batch by batch), with per-sample seeds (candidate i: stream i of ``seed``); each is
scored by the reward (``evaluation.rewards``), and a pair is kept when its two scores differ by at
least ``margin`` (near ties carry no preference: they are dropped), the higher-scored image
chosen. Sampling stops at ``n`` pairs or after ``max_samples`` candidates (the cap); the folder
then holds what was found (``pairs.jsonl`` is rewritten atomically after every batch, so an
interrupted run keeps its pairs) and ``MakePairsResult.complete`` says whether ``n`` were reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.protocol import info_of
from ..core.rng import per_sample_generators
from ..core.sampling import sample
from ..errors import UserError

MARGIN = 0.1
"""Default margin: the smallest reward difference that makes a pair (digit-confidence is a
probability: 0.1 drops pairs of two equally clear or equally unclear digits)."""
CANDIDATES_PER_PAIR = 10
"""Default cap: at most 10 candidates per requested pair (5 tries a pair) before giving up."""


@dataclass(frozen=True)
class MakePairsResult:
    pairs: int
    asked: int
    candidates: int
    folder: Path

    @property
    def complete(self) -> bool:
        return self.pairs >= self.asked


def make_pairs(den, requests: list[dict], reward, n: int, out, *, margin: float = MARGIN,
               max_samples: int | None = None, batch_size: int = 32, seed: int = 0, guidance: float | None = None,
               sampler: str | None = None, steps: int | None = None, knobs: dict | None = None,
               overwrite: bool = False, progress: bool = True) -> MakePairsResult:
    """Sample, score and pair candidates of ``den`` (a loaded denoiser) into the folder ``out``
    (module docstring). ``requests``: dicts with ``prompt`` (text model), ``class`` (a class model's
    class, or only the reward's target) or nothing (unconditional); ``reward(images, conditions)``
    as in ``evaluation.rewards``."""
    from ..core.sampling import sampling_defaults
    from ..data.folder import export_pngs
    from ..data.pairs import PAIRS_FILE, write_pairs
    from ..models.latent import to_pixels
    from .conditioning import conditioned

    if n < 1:
        raise UserError(f"n is the number of pairs to make, at least 1; got {n}", param="n")
    if not margin >= 0:
        raise UserError(f"margin is a reward difference >= 0, got {margin}", param="margin")
    if batch_size < 2 or batch_size % 2:
        raise UserError(f"candidates come in pairs: the batch size is an even number >= 2, got {batch_size}",
                        param="batch_size")
    cap = max_samples if max_samples is not None else CANDIDATES_PER_PAIR * n
    if cap < 2:
        raise UserError(f"max_samples must allow at least one pair of candidates, got {cap}", param="max_samples")
    out = Path(out)
    if (out / PAIRS_FILE).exists() or (out / "images").exists():
        if not overwrite:
            raise UserError(f"{out} already holds pairs", param="out", hint="pass --overwrite or another --out")
        import shutil

        shutil.rmtree(out / "images", ignore_errors=True)
        (out / PAIRS_FILE).unlink(missing_ok=True)
    info = info_of(den)
    requests = [dict(r) for r in requests] or [{}]
    if hasattr(reward, "check"):  # before anything is sampled: the requests and the images' shape
        pixels = info.latent.pixel_shape if getattr(info, "latent", None) is not None else info.image_shape
        reward.check(requests, tuple(pixels))
    kind = info.cond.kind
    guided = [conditioned(den, class_=r.get("class") if kind == "class" else None,
                          prompt=r.get("prompt"), guidance=guidance) for r in requests]
    choice = sampling_defaults(den, sampler, steps, guidance)
    lines, i, b = [], 0, 0
    from tqdm.auto import tqdm

    bar = tqdm(total=n, disable=not progress, unit="pair", desc="make-pairs")
    try:
        while len(lines) < n and i + 2 <= cap:
            r = b % len(requests)
            gden, cond = guided[r]
            m = min(batch_size, cap - i) // 2 * 2
            idx = range(i, i + m)
            x = sample(gden, (m, *info.image_shape), sampler=choice.sampler, steps=choice.steps, cond=cond(m),
                       generator=per_sample_generators(seed, idx), **(knobs or {}))
            pixels = to_pixels(info, x.float()).clamp(-1, 1)
            scores = torch.as_tensor(reward((pixels + 1) / 2, [requests[r]] * m), dtype=torch.float64).cpu()
            for j in range(0, m, 2):
                if len(lines) >= n:
                    break
                a_, b_ = scores[j].item(), scores[j + 1].item()
                if abs(a_ - b_) < margin:
                    continue
                w, l = (j, j + 1) if a_ > b_ else (j + 1, j)
                paths = [export_pngs(pixels[k:k + 1], out / "images", start=i + k)[0] for k in (w, l)]
                line = {"chosen": paths[0].relative_to(out).as_posix(), "rejected": paths[1].relative_to(out).as_posix()}
                if requests[r].get("prompt") is not None:
                    line["prompt"] = requests[r]["prompt"]
                elif requests[r].get("class") is not None and kind == "class":
                    line["class"] = requests[r]["class"]
                line["meta"] = {"reward": getattr(reward, "name", "reward"), "chosen_score": max(a_, b_),
                                "rejected_score": min(a_, b_), "seed": seed, "chosen_index": i + w,
                                "rejected_index": i + l, **({"target": requests[r]} if requests[r] else {})}
                lines.append(line)
                bar.update(1)
            write_pairs(out, lines)  # atomically, after every batch: an interrupted run keeps its pairs
            i, b = i + m, b + 1
    finally:
        bar.close()
    if not lines:
        out.mkdir(parents=True, exist_ok=True)
    return MakePairsResult(len(lines), n, i, out)
