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
- asking a model for what it was not trained on is an error that says what it takes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.cfg import classifier_free, null_cond
from ..core.cond import Cond
from ..core.protocol import info_of


def model_kind(info) -> str:
    """"class", "text", "image" or "none": what a denoiser's network is conditioned on."""
    if "labels" in info.conditioning:
        return "class"
    if "text" in info.conditioning or "tokens" in info.conditioning:
        return "text"
    if "image" in info.conditioning:
        return "image"
    return "none"


def class_label(spec, info, flag: str = "--class") -> int:
    """A class index or name of a class-conditional model, range-checked."""
    names = list(info.class_names or [])
    if str(spec) in names:
        return names.index(str(spec))
    try:
        k = int(spec)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {spec!r} is not a class of this model; its classes: "
                         f"{', '.join(names) if names else f'0..{info.num_classes - 1}'}") from None
    if not 0 <= k < info.num_classes:
        raise ValueError(f"{flag} {k} is outside the model's classes 0..{info.num_classes - 1}")
    return k


def encode_prompts(den, prompts) -> Cond:
    """Prompts as the condition a text model reads, through the encoder it was trained with."""
    from ..text import get_encoder

    info = info_of(den)
    if model_kind(info) != "text":
        raise ValueError("prompts need a text-conditional model (train with --cond text)")
    return get_encoder(info.text_encoder).encode(prompts)


@dataclass
class Conditioning:
    """The positive condition of one sample (None: the null condition), repeated for a batch."""

    denoiser: object
    positive: Cond | None

    def __call__(self, n: int, device=None) -> Cond | None:
        if self.positive is None:
            return null_cond(self.denoiser, n, device) if model_kind(info_of(self.denoiser)) != "none" else None
        pos = self.positive if device is None else self.positive.to(device)
        if pos.batch_size == 1:
            return Cond.cat([pos] * n)
        if pos.batch_size != n:
            raise ValueError(f"{pos.batch_size} conditions (one per sample) for {n} samples")
        return pos

    @property
    def given(self) -> bool:
        return self.positive is not None


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
    kind = model_kind(info)
    guided_class = None
    if classifier is not None:
        if class_ is None:
            raise ValueError("--classifier guides toward a class: give --class K")
        names = list((getattr(classifier, "meta", None) or {}).get("class_names") or [])
        guided_class = names.index(str(class_)) if str(class_) in names else _classifier_label(class_, classifier)
        if kind != "class":
            class_ = None  # the class is the classifier's, not the model's
    asked = {"--class": class_, "--prompt": prompt, "--negative-class": negative_class,
             "--negative-prompt": negative_prompt, "--guidance": guidance, "--guidance-interval": interval}
    asked = [k for k, v in asked.items() if v is not None] + (["--guidance-rescale"] if rescale else [])
    if kind == "none":
        if asked:
            hint = " (or add --classifier CLS to guide it toward --class)" if "--class" in asked else ""
            raise ValueError(f"{', '.join(asked)}: this checkpoint is unconditional "
                             f"(train with --cond class or --cond text){hint}")
        return _with_classifier(den, classifier, guided_class, classifier_scale, classifier_sigma_max), Conditioning(den, None)
    wrong = {"class": ("--prompt", "--negative-prompt"), "text": ("--class", "--negative-class"),
             "image": ("--class", "--negative-class", "--prompt", "--negative-prompt")}[kind]
    bad = [k for k in asked if k in wrong]
    if bad:
        takes = {"class": "--class / --negative-class", "text": "--prompt / --negative-prompt",
                 "image": "its low-resolution --input through `diffusionlab upscale`"}[kind]
        raise ValueError(f"{', '.join(bad)}: this checkpoint is {kind}-conditional; it takes {takes}")
    if kind == "image":  # the pipeline (upscale) gives each sample its image; CFG against the null image
        pos = neg = None
    elif kind == "class":
        pos = Cond(labels=torch.tensor([class_label(class_, info)])) if class_ is not None else None
        neg = Cond(labels=torch.tensor([class_label(negative_class, info, "--negative-class")])) \
            if negative_class is not None else None
    else:
        pos = encode_prompts(den, [prompt] if isinstance(prompt, str) else list(prompt)) if prompt is not None else None
        neg = encode_prompts(den, [negative_prompt]) if negative_prompt is not None else None
    scale = guidance if guidance is not None else (info.default_guidance or 1.0)
    guided = classifier_free(den, scale, negative=neg, rescale=rescale, interval=interval)
    return _with_classifier(guided, classifier, guided_class, classifier_scale, classifier_sigma_max), \
        Conditioning(den, pos)


def _classifier_label(spec, classifier) -> int:
    k = (getattr(classifier, "config", None) or {}).get("num_classes")
    try:
        label = int(spec)
    except (TypeError, ValueError):
        raise ValueError(f"--class {spec!r} is not a class of the classifier") from None
    if k is not None and not 0 <= label < k:
        raise ValueError(f"--class {label} is outside the classifier's classes 0..{k - 1}")
    return label


def _with_classifier(den, classifier, label, scale, sigma_max):
    if classifier is None:
        return den
    from ..core.guidance import ClassifierGuided

    return ClassifierGuided(den, classifier, label, scale, sigma_max)
