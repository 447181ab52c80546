"""A user's condition and guidance, from class / prompt flags to (guided denoiser, condition).

``conditioned(den, ...)`` is the one place that turns what a user asks for - a class or a
prompt, a negative class or prompt, a guidance scale, rescale and interval - into what samplers
take: the denoiser wrapped in classifier-free guidance (``core.cfg``) and a ``Conditioning``
that gives the ``Cond`` of any number of samples. ``diffusionlab sample`` / ``eval``, the demo,
the benchmarks and the pipelines all call it, so they agree on every default:

- the guidance scale defaults to the checkpoint's recorded one (``info.default_guidance``), else 1;
- no class / prompt on a conditional model means the null condition (unconditional sampling);
- the empty prompt ``""`` counts as given: it is the null condition; with a negative prompt,
  CFG runs with the null condition as the positive and the negative prompt in place of the null;
- asking a model for what it was not trained on is an error that says what it takes;
- a guidance-distilled model (``CondSpec.guidance_input``) gets the scale as its input in the
  condition (``Conditioning.guidance``) and is never wrapped in CFG: one network call a step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.cfg import classifier_free
from ..core.cond import Cond, CondSpec
from ..core.protocol import info_of
from ..core.sampling import sampling_defaults
from ..errors import UserError


def class_label(spec, info, param: str = "class_") -> int:
    """A class index or name of a class-conditional model, range-checked."""
    names = list(info.cond.class_names or [])
    k = info.cond.num_classes
    if str(spec) in names:
        return names.index(str(spec))
    try:
        label = int(spec)
    except (TypeError, ValueError):
        raise UserError(f"{spec!r} is not a class of this model; its classes: "
                        f"{', '.join(names) if names else f'0..{k - 1}'}", param=param) from None
    if not 0 <= label < k:
        raise UserError(f"{label} is outside the model's classes 0..{k - 1}", param=param)
    return label


def encode_prompts(den, prompts, param: str = "prompt") -> Cond:
    """Prompts as the condition a text model reads, through the encoder it was trained with."""
    from ..text import get_encoder

    spec = info_of(den).cond
    if spec.kind != "text":
        raise UserError("prompts need a text-conditional model (one trained on captions)", param=param)
    return get_encoder(spec.encoder).encode(prompts, param=param)


@dataclass(frozen=True)
class Conditioning:
    """The positive condition of one sample (None: the null condition), repeated for a batch."""

    denoiser: object
    positive: Cond | None
    guidance: float | None = None  # a guidance-distilled model's scale input (``CondSpec.guidance_input``)

    def __call__(self, n: int, device=None) -> Cond | None:
        info = info_of(self.denoiser)
        if self.positive is None:
            cond = info.null_cond(n, device) if info.cond.conditional else None
        else:
            cond = CondSpec.repeat(self.positive if device is None else self.positive.to(device), n)
        return cond.with_guidance(self.guidance) if cond is not None and self.guidance is not None else cond


CLASSIFIER_SIGMA_MAX = 30.0  # classifier guidance only for sigma <= 30 (ClassifierGuided.sigma_max; measured below)


def conditioned(den, class_=None, prompt=None, negative_class=None, negative_prompt: str | None = None,
                guidance: float | None = None, rescale: float = 0.0, interval=None, classifier=None,
                classifier_scale: float = 1.0, classifier_sigma_max: float | None = CLASSIFIER_SIGMA_MAX):
    """(guided denoiser, Conditioning); see the module docstring. ``class_`` is an index or a
    class name; ``prompt`` one prompt, or a list of one per sample; ``guidance`` the CFG scale
    s = 1 + w. With a noise-aware ``classifier`` (``training.classifier.load_classifier``),
    ``class_`` is the class it guides toward (Dhariwal & Nichol 2021, ``ClassifierGuided``, on
    top of CFG where the model is conditional); it then works on unconditional models too.
    ``classifier_sigma_max``: no classifier guidance above this sigma (None: everywhere). The demo
    model's grid starts at sigma 64,179 (its near-zero terminal SNR); guided there, a learned
    classifier's sigma^2 grad log p is of the order of sigma and wrecks the first step: requested-
    class accuracy at scales 1 / 3 / 10 was 0.12 / 0.11 / 0.09 (chance 0.1) guiding everywhere and
    0.365 / 0.78 / 0.90 with the limit at 30 (0.35 / 0.71 / 0.87 at 10; 200 samples; bench/NOTES.md)."""
    info = info_of(den)
    kind = info.cond.kind
    guided_class = None
    if classifier is not None:
        guided_class = _classifier_label(class_, classifier)
        if kind != "class":
            class_ = None  # the class is the classifier's, not the model's
    _check_asked(kind, dict(class_=class_, prompt=prompt, negative_class=negative_class, negative_prompt=negative_prompt,
                            guidance=guidance, interval=interval, rescale=rescale or None))
    if kind == "none":
        return _with_classifier(den, classifier, guided_class, classifier_scale, classifier_sigma_max), Conditioning(den, None)
    pos, neg = _positive_negative(den, info, kind, class_, prompt, negative_class, negative_prompt)
    scale = sampling_defaults(info, "auto", None, guidance).guidance
    if info.cond.guidance_input:  # guidance distilled into the model: the scale is its input, never CFG again
        _distilled_guidance(dict(negative_class=negative_class, negative_prompt=negative_prompt, rescale=rescale or None,
                                 interval=interval))
        return _with_classifier(den, classifier, guided_class, classifier_scale, classifier_sigma_max), \
            Conditioning(den, pos, scale)
    guided = classifier_free(den, scale, negative=neg, rescale=rescale, interval=interval)
    return _with_classifier(guided, classifier, guided_class, classifier_scale, classifier_sigma_max), \
        Conditioning(den, pos)


TAKES = {"class": ("class_", "negative_class"), "text": ("prompt", "negative_prompt"), "image": ()}
GUIDANCE_PARAMS = ("guidance", "interval", "rescale")


def _check_asked(kind: str, asked: dict) -> None:
    """What the user asked for must be what the model takes (``UserError`` naming the parameter)."""
    asked = [k for k, v in asked.items() if v is not None]
    allowed = TAKES.get(kind, ()) + (GUIDANCE_PARAMS if kind != "none" else ())
    bad = [k for k in asked if k not in allowed]
    if not bad:
        return
    if kind == "none":
        hint = "; a classifier can guide it toward a class (classifier guidance)" if "class_" in bad else ""
        raise UserError(f"this checkpoint is unconditional: train it on classes or captions to use {', '.join(bad)}{hint}",
                        param=bad[0])
    takes = {"class": "a class and a negative class", "text": "a prompt and a negative prompt",
             "image": "its low-resolution input (the upscale pipeline)"}[kind]
    raise UserError(f"this checkpoint is {kind}-conditional; it takes {takes}", param=bad[0])


def _distilled_guidance(asked: dict) -> None:
    """What classifier-free guidance alone can do is refused on a guidance-distilled model."""
    bad = [k for k, v in asked.items() if v is not None]
    if bad:
        raise UserError(f"this model has its guidance distilled in (the scale is an input, one network call a step); "
                        f"{bad[0]} needs classifier-free guidance: use its teacher", param=bad[0])


def _positive_negative(den, info, kind, class_, prompt, negative_class, negative_prompt):
    """The asked condition and negative condition (one sample each; None: not asked)."""
    if kind == "class":
        pos = Cond(labels=torch.tensor([class_label(class_, info)])) if class_ is not None else None
        neg = Cond(labels=torch.tensor([class_label(negative_class, info, "negative_class")])) \
            if negative_class is not None else None
        return pos, neg
    if kind == "text":
        pos = encode_prompts(den, [prompt] if isinstance(prompt, str) else list(prompt)) if prompt is not None else None
        neg = encode_prompts(den, [negative_prompt], "negative_prompt") if negative_prompt is not None else None
        return pos, neg
    return None, None  # image / vector: the pipeline gives each sample its condition; CFG against the null one


def _classifier_label(spec, classifier) -> int:
    """The class a noise-aware classifier guides toward: an index or one of its class names."""
    if spec is None:
        raise UserError("classifier guidance steers toward a class: give one", param="class_")
    names = list(classifier.class_names or [])
    if str(spec) in names:
        return names.index(str(spec))
    k = classifier.num_classes
    try:
        label = int(spec)
    except (TypeError, ValueError):
        raise UserError(f"{spec!r} is not a class of the classifier", param="class_") from None
    if not 0 <= label < k:
        raise UserError(f"{label} is outside the classifier's classes 0..{k - 1}", param="class_")
    return label


def _with_classifier(den, classifier, label, scale, sigma_max):
    if classifier is None:
        return den
    from ..core.guidance import ClassifierGuided

    return ClassifierGuided(den, classifier, label, scale, sigma_max)
