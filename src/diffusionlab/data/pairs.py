"""Preference pairs: a folder with ``pairs.jsonl`` and the images it names (Diffusion-DPO's data,
``training.dpo``; written by ``diffusionlab make-pairs``, or by hand from human labels).

One JSON object a line::

    {"chosen": "images/000017.png", "rejected": "images/000016.png", "prompt": "a handwritten 3"}

- ``chosen`` and ``rejected`` (required): image paths relative to the folder (no absolute paths,
  nothing outside the folder), two different images of the model's size;
- ``prompt`` (a text model) or ``class`` (a class model: an index or a class name), optional: a
  pair without one is a preference of the unconditional (null-condition) model;
- ``meta`` (optional, any JSON): ignored by training; ``make-pairs`` records the rewards and
  seeds there.

Any other key is refused (a misspelt ``promt`` would otherwise train without its prompt). Blank
lines are skipped. A pair repeated (the same images under the same condition) or reversed (the
same two images with chosen and rejected swapped) is refused: the first double-counts a vote, the
second contradicts one. Every problem is reported with the file, the line number and the reason,
before anything trains (``UserError``: exit code 2), up to ``MAX_REPORTED`` of them at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .paths import MissingPath

PAIRS_FILE = "pairs.jsonl"
KEYS = ("chosen", "rejected", "prompt", "class", "meta")
MAX_REPORTED = 10


@dataclass(frozen=True)
class Pair:
    """One line of ``pairs.jsonl``: the two image paths (relative to the folder), the condition
    (``prompt`` text or ``class`` as written; both None: unconditional) and its line number."""

    chosen: str
    rejected: str
    prompt: str | None = None
    class_: int | str | None = None
    line: int = 0


@dataclass
class PairSet:
    """The pairs as tensors: ``chosen`` and ``rejected`` float32 [N, C, H, W] in [-1, 1], one
    ``prompt`` (None where a pair has none) and one ``class_`` (None likewise) per pair, and
    each pair's line number in ``pairs.jsonl``."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    prompts: list
    classes: list
    folder: str = ""
    lines: list | None = None     # the line number of each pair in pairs.jsonl

    def __len__(self) -> int:
        return len(self.chosen)


def read_pairs_file(folder) -> list[Pair]:
    """The lines of ``folder/pairs.jsonl`` checked for schema, paths and duplicates (not yet the
    images: ``load_pairs`` does that against a model's shape)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPath(f"pairs folder {str(folder)!r} does not exist (it holds {PAIRS_FILE} and the images)",
                          param="pairs")
    path = folder / PAIRS_FILE
    if not path.is_file():
        raise MissingPath(f"{path} does not exist: a pairs folder holds {PAIRS_FILE}, one "
                          '{"chosen": ..., "rejected": ...} object a line', param="pairs")
    pairs, problems, seen = [], [], {}
    root = folder.resolve()
    for no, text in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            pair = _parse(text, no, root)
        except ValueError as e:
            problems.append(f"{path}:{no}: {e}")
            continue
        cond = (pair.prompt, None if pair.class_ is None else str(pair.class_))
        key, rev = (pair.chosen, pair.rejected, cond), (pair.rejected, pair.chosen, cond)
        if key in seen:
            problems.append(f"{path}:{no}: repeats the pair of line {seen[key]}")
            continue
        if rev in seen:
            problems.append(f"{path}:{no}: reverses the pair of line {seen[rev]} (chosen and rejected swapped)")
            continue
        seen[key] = no
        pairs.append(pair)
    _raise(problems)
    if not pairs:
        raise UserError(f"{path} holds no pairs", param="pairs")
    return pairs


def _parse(text: str, no: int, root: Path) -> Pair:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a line is one JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; a pair has {', '.join(KEYS)}")
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise ValueError(f"missing {key!r}")
        if not isinstance(obj[key], str) or not obj[key]:
            raise ValueError(f"{key!r} is an image path relative to the folder, got {obj[key]!r}")
        _inside(obj[key], root, key)
    if Path(obj["chosen"]).as_posix() == Path(obj["rejected"]).as_posix():
        raise ValueError("chosen and rejected are the same image")
    prompt, klass = obj.get("prompt"), obj.get("class")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"'prompt' is text, got {prompt!r}")
    if klass is not None and (isinstance(klass, bool) or not isinstance(klass, (int, str))):
        raise ValueError(f"'class' is a class index or name, got {klass!r}")
    if prompt is not None and klass is not None:
        raise ValueError("a pair has a 'prompt' (text model) or a 'class' (class model), not both")
    return Pair(Path(obj["chosen"]).as_posix(), Path(obj["rejected"]).as_posix(), prompt, klass, no)


def _inside(rel: str, root: Path, key: str) -> None:
    p = Path(rel)
    if p.is_absolute() or not (root / p).resolve().is_relative_to(root):
        raise ValueError(f"{key!r} {rel!r} is not inside the pairs folder (paths are relative to it)")


def _raise(problems: list) -> None:
    if not problems:
        return
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    head = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems[:MAX_REPORTED])
    raise UserError(head + more, param="pairs", hint="fix the lines named above; see README 'Preference alignment'")


def load_pairs(folder, image_shape: tuple) -> PairSet:
    """``read_pairs_file`` plus the images, each read once, checked to exist, decode and be
    ``image_shape`` (C, H, W) in size: a wrong size is refused, not resized (a preference is
    about the pixels as they were judged). Greyscale / colour are converted to C channels."""
    from PIL import Image

    from .folder import _to_mode

    folder = Path(folder)
    pairs = read_pairs_file(folder)
    channels, h, w = (int(s) for s in image_shape)
    cache, problems = {}, []
    path = folder / PAIRS_FILE

    def image(rel: str, no: int, key: str):
        if rel in cache:
            return cache[rel]
        f = folder / rel
        if not f.is_file():
            problems.append(f"{path}:{no}: {key} image {rel!r} does not exist")
            cache[rel] = None
            return None
        try:
            with Image.open(f) as im:
                im = _to_mode(im, channels)
                size = im.size
                a = np.asarray(im, dtype=np.float32)
        except Exception as e:  # PIL raises many types for unreadable files
            problems.append(f"{path}:{no}: {key} image {rel!r} is not a readable image ({type(e).__name__})")
            cache[rel] = None
            return None
        if size != (w, h):
            problems.append(f"{path}:{no}: {key} image {rel!r} is {size[0]}x{size[1]}, the model's images are {w}x{h}")
            cache[rel] = None
            return None
        t = torch.from_numpy(np.ascontiguousarray((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)) / 127.5 - 1.0))
        cache[rel] = t
        return t

    chosen, rejected = [], []
    for p in pairs:
        chosen.append(image(p.chosen, p.line, "chosen"))
        rejected.append(image(p.rejected, p.line, "rejected"))
    _raise(problems)
    return PairSet(torch.stack(chosen).float(), torch.stack(rejected).float(), [p.prompt for p in pairs],
                   [p.class_ for p in pairs], str(folder), [p.line for p in pairs])


def write_pairs(folder, lines: list[dict]) -> Path:
    """``pairs.jsonl`` of ``lines`` (dicts with the keys above), written atomically."""
    from ..core.files import atomic_write

    bad = [sorted(set(d) - set(KEYS)) for d in lines if set(d) - set(KEYS)]
    if bad:
        raise ValueError(f"pairs lines with unknown keys {bad[0]}")
    path = Path(folder) / PAIRS_FILE
    atomic_write(path, "".join(json.dumps(d) + "\n" for d in lines).encode())
    return path
