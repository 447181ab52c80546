"""Rewards: scores of generated images, for ranking candidates into preference pairs
(``pipelines.pairs``, ``diffusionlab make-pairs``): automatic feedback from a reward model in place
of human labels.

A reward is a function ``reward(images, conditions) -> scores``: ``images`` float32 [B, C, H, W] in
[0, 1] (the public range), ``conditions`` one dict per image with what it was asked for
(``"prompt"``: text; ``"class"``: the requested class, also when the model is unconditional or
text-conditional and the class is only the reward's target), ``scores`` B finite numbers, higher
is better.

- ``digit-confidence`` (built in): the project's digit classifier's (``evaluation.digits``)
  probability of the requested digit - the class, else the digit the prompt names
  (``text.captions.digit_named``).
- ``module:function`` or ``path/to/file.py:function``: a user's own reward of that signature.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch

from ..errors import UserError


def digit_of(condition: dict) -> int | None:
    """The digit a request asks for: its class (0..9), else the one digit its prompt names."""
    from ..text.captions import digit_named

    if condition.get("class") is not None:
        try:
            k = int(condition["class"])
        except (TypeError, ValueError):
            return None
        return k if 0 <= k <= 9 else None
    if condition.get("prompt"):
        return digit_named(condition["prompt"])
    return None


def check_digit_requests(conditions: list[dict]) -> None:
    """digit-confidence needs every request to name one digit (exit code 2 otherwise)."""
    for c in conditions:
        if digit_of(c) is None:
            what = f"the prompt {c['prompt']!r} names no single digit" if c.get("prompt") else \
                f"class {c['class']!r} is not a digit 0..9" if c.get("class") is not None else "no digit was asked for"
            raise UserError(f"digit-confidence scores the requested digit, and {what}",
                            param="prompt" if c.get("prompt") else "class_",
                            hint="name a digit in the prompt (\"a handwritten 3\") or give --class K")


class DigitConfidence:
    """The digit classifier's probability of the requested digit (module docstring)."""

    name = "digit-confidence"

    def __init__(self, classifier=None):
        from .digits import load_digit_classifier

        self.classifier = classifier if classifier is not None else load_digit_classifier()

    def check(self, conditions: list[dict], image_shape: tuple | None = None) -> None:
        """Every request names a digit; the images (C, H, W) are greyscale and at least 16x16 (what
        the classifier reads), checked before anything is sampled."""
        check_digit_requests(conditions)
        if image_shape is not None and (image_shape[0] != 1 or min(image_shape[1:]) < 16):
            raise UserError(f"digit-confidence scores greyscale digits of at least 16x16 pixels; this model makes "
                            f"{image_shape[0]}x{image_shape[1]}x{image_shape[2]} images", param="reward")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: list[dict]) -> torch.Tensor:
        self.check(conditions, tuple(images.shape[1:]))
        digits = torch.tensor([digit_of(c) for c in conditions])
        p = self.classifier.predict_proba(images.float() * 2 - 1)
        return p[torch.arange(len(digits)), digits]


REWARDS = {"digit-confidence": DigitConfidence}


class UserReward:
    """A user's ``module:function`` (or ``file.py:function``), its output checked."""

    def __init__(self, spec: str):
        self.name = spec
        self.fn = _import(spec)

    def check(self, conditions: list[dict], image_shape: tuple | None = None) -> None:
        """A user's reward decides itself what it needs."""

    def __call__(self, images: torch.Tensor, conditions: list[dict]) -> torch.Tensor:
        out = self.fn(images, conditions)
        try:
            scores = torch.as_tensor(out, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"the reward {self.name} returned {type(out).__name__}, not {len(images)} numbers",
                            param="reward") from None
        if scores.numel() != len(images):
            raise UserError(f"the reward {self.name} returned {scores.numel()} scores for {len(images)} images",
                            param="reward")
        if not bool(torch.isfinite(scores).all()):
            raise UserError(f"the reward {self.name} returned a non-finite score", param="reward")
        return scores


def _import(spec: str):
    if ":" not in spec:
        raise UserError(f"--reward is one of {', '.join(REWARDS)} or module:function, got {spec!r}", param="reward")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise UserError(f"the reward file {where} does not exist", param="reward")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as e:  # the user's module failed to import: say so, with its error
        raise UserError(f"cannot import the reward module {where!r}: {type(e).__name__}: {e}", param="reward") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{where} has no function {name!r}", param="reward")
    return fn


def load_reward(spec: str):
    """A built-in reward by name (``REWARDS``) or a user's ``module:function``."""
    if spec in REWARDS:
        return REWARDS[spec]()
    return UserReward(spec)

