"""Captions for the labelled digits: each label in many phrasings, word and numeral forms.

``TRAIN_TEMPLATES`` are the phrasings a text-conditional model is trained on; ``HELDOUT_TEMPLATES``
never appear in training and measure whether the model (through its text encoder) generalises
to wordings it has not seen. ``{w}`` is the digit's word ("seven"), ``{n}`` its numeral ("7").
"""
from __future__ import annotations

import torch

from ..core import rng

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TRAIN_TEMPLATES = (
    "{n}", "{w}", "the digit {n}", "the digit {w}", "a handwritten {w}", "a handwritten {n}",
    "the number {w}", "the number {n}", "digit {n}", "digit {w}", "a {w}", "an image of the digit {w}",
    "a picture of a {w}", "handwritten digit {n}", "a drawing of the number {w}", "the numeral {n}",
    "a hand-drawn {w}", "number {n}", "write a {w}", "a black and white {w}", "a {n}",
    "the handwritten number {w}", "an MNIST {w}", "a sketch of the digit {n}",
)

HELDOUT_TEMPLATES = (
    "a photo of the numeral {w}", "someone wrote the number {n} by hand", "a {w} written with a pen",
    "the figure {w}", "a scribbled {n}", "a neat handwritten {w} digit", "show me a {w}",
    "a {n} on white paper",
)

SPLITS = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}


def _templates(split: str) -> tuple:
    if split not in SPLITS:
        raise ValueError(f"unknown caption split {split!r}; choose from {', '.join(SPLITS)}")
    return SPLITS[split]


def digit_caption(label: int, template: str) -> str:
    label = int(label)
    if not 0 <= label <= 9:
        raise ValueError(f"a digit label is 0..9, got {label}")
    word, num = DIGIT_WORDS[label], str(label)
    # the article before the digit itself follows its sound: "an eight", "an 8", "a seven"
    for slot, value in (("{w}", word), ("{n}", num)):
        article = "an" if value in ("eight", "8") else "a"  # "a one", "an eight"
        template = template.replace(f"a {slot}", f"{article} {slot}").replace(f"A {slot}", f"{article.title()} {slot}")
    return template.format(w=word, n=num)


def caption_table(split: str = "train") -> tuple[list[str], torch.Tensor]:
    """Every caption of ``split`` (digit-major: template j of digit k at k * T + j) and its label."""
    t = _templates(split)
    prompts = [digit_caption(k, tpl) for k in range(10) for tpl in t]
    return prompts, torch.arange(10).repeat_interleave(len(t))


def caption_ids(labels: torch.Tensor, generator=None, split: str = "train") -> torch.Tensor:
    """For each label a random phrasing of ``split``: indices into ``caption_table(split)``."""
    t = len(_templates(split))
    pick = rng.randint(t, (labels.shape[0],), generator, labels.device)
    return labels.long() * t + pick


def prompt_for(label: int, split: str = "heldout", i: int = 0) -> str:
    """Phrasing ``i`` (cycled) of ``split`` for ``label``: the fixed prompts of pictures and reports."""
    t = _templates(split)
    return digit_caption(label, t[i % len(t)])


def digit_named(prompt: str) -> int | None:
    """The one digit a prompt names, as a numeral or a word ("a handwritten 3", "show me a
    seven"); None when it names none or more than one different digit."""
    import re

    found = {int(m) for m in re.findall(r"(?<![0-9])[0-9](?![0-9])", prompt)}
    words = re.findall(r"[a-z]+", prompt.lower())
    found |= {DIGIT_WORDS.index(w) for w in words if w in DIGIT_WORDS}
    return found.pop() if len(found) == 1 else None
