"""What a training run conditions on: one ``ConditionSource`` per ``TrainConfig.cond`` kind.

The trainer asks its source for the condition of a training micro-batch (by image index, with
the trainer's generator), of a validation slice and of its sample grids, for the network
settings the conditioning needs, and for the record stored in the checkpoint (which
``load_denoiser`` and ``sample`` read back).

- ``none``: ``Cond()``.
- ``class``: the data's labels (``Cond.labels``); the network gets ``num_classes``.
- ``text``: captions encoded by ``text.get_encoder(TrainConfig.text_encoder)``. The embedded
  digits get a random training phrasing of their label at every draw (``text.captions``); a
  folder needs a ``captions.jsonl``. Every distinct caption is encoded once at start-up into a
  table (MiniLM embeddings come from the user cache after the first run); a batch indexes it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from ..errors import UserError

from ..core.cond import Cond

COND_KINDS = ("none", "class", "text", "image")
IMAGE_TASKS = ("superres",)


class ConditionSource(ABC):
    kind: str = "none"

    def model_settings(self) -> dict:
        """Network config fields this conditioning needs."""
        return {}

    def record(self) -> dict | None:
        """The checkpoint's ``conditioning`` entry (None: unconditional)."""
        return None

    @abstractmethod
    def train(self, idx: torch.Tensor, generator, x: torch.Tensor | None = None) -> Cond:
        """The condition of training images ``idx`` (``x``: those images as the batch holds them,
        after augmentation)."""

    @abstractmethod
    def val(self, start: int, stop: int, x: torch.Tensor | None = None) -> Cond:
        """The condition of validation images start..stop (fixed across evaluations; ``x`` the images)."""

    def sampling(self, n: int, device) -> Cond | None:
        """The condition of the trainer's grids and evaluations (None: unconditional)."""
        return None


class NoCondition(ConditionSource):
    def train(self, idx, generator, x=None) -> Cond:
        return Cond()

    def val(self, start, stop, x=None) -> Cond:
        return Cond()


class ClassCondition(ConditionSource):
    kind = "class"

    def __init__(self, train_set, val_set, data: str, device, num_classes: int | None = None):
        if train_set.labels is None:
            raise UserError(f"class conditioning needs labels, and data {data!r} has none (a folder needs one "
                             "sub-folder per class or a labels.csv of file,label rows)")
        self.names = train_set.class_names
        self.num_classes = num_classes or len(self.names or []) or int(train_set.labels.max()) + 1
        self.train_labels = train_set.labels.to(device)
        self.val_labels = val_set.labels.to(device)

    def model_settings(self) -> dict:
        return {"num_classes": self.num_classes}

    def record(self) -> dict:
        return {"kind": "class", "num_classes": self.num_classes, "class_names": self.names}

    def train(self, idx, generator, x=None) -> Cond:
        return self._cond(self.train_labels[idx])

    def val(self, start, stop, x=None) -> Cond:
        return self._cond(self.val_labels[start:stop])

    @staticmethod
    def _cond(labels: torch.Tensor) -> Cond:
        """Label -1 is the null condition (a preference pair without a class, ``training.dpo``)."""
        null = labels < 0
        return Cond(labels=labels.clamp(min=0), null=null) if bool(null.any()) else Cond(labels=labels)

    def sampling(self, n, device) -> Cond:
        """Class i % K for sample i (a row of each class)."""
        return Cond(labels=torch.arange(n, device=device) % self.num_classes)


class TextCondition(ConditionSource):
    kind = "text"

    def __init__(self, train_set, val_set, data: str, device, encoder: str):
        from ..text import caption_ids, caption_table, get_encoder, prompt_for

        self.encoder_name, self.device = encoder, device
        self.digits = train_set.captions is None and train_set.labels is not None and data in ("mnist", "digits")
        if self.digits:  # captions made from the labels, a random training phrasing at every draw
            prompts, _ = caption_table("train")
            self.train_labels, self.val_labels = train_set.labels.to(device), val_set.labels.to(device)
            self.source = "digit captions (text.captions, training phrasings)"
            g = torch.Generator().manual_seed(12345)
            self.val_ids = caption_ids(val_set.labels, g).to(device)
            self.grid_prompts = [prompt_for(i % 10, "heldout", i // 10) for i in range(100)]
        else:
            if train_set.captions is None:
                raise UserError(f"text conditioning needs captions, and data {data!r} has none (a folder needs "
                                 "a captions.jsonl of {\"file\": ..., \"caption\": ...} lines beside the images)")
            prompts = list(dict.fromkeys(train_set.captions + val_set.captions))
            index = {p: i for i, p in enumerate(prompts)}
            self.train_ids = torch.tensor([index[c] for c in train_set.captions], device=device)
            self.val_ids = torch.tensor([index[c] for c in val_set.captions], device=device)
            self.source = "captions.jsonl"
            self.grid_prompts = train_set.captions[:100]
        self.encoder = get_encoder(encoder)
        self.table = self.encoder.encode(prompts).to(device)  # every distinct caption, encoded once
        self.prompts = prompts

    def model_settings(self) -> dict:
        from ..text import encoder_width

        return {"text_dim": encoder_width(self.encoder_name), "text_encoder": self.encoder_name}

    def record(self) -> dict:
        from ..text.encoders import encoder_fingerprint

        return {"kind": "text", "encoder": self.encoder_name, "max_tokens": self.encoder.max_tokens,
                "captions": self.source, "encoder_fingerprint": encoder_fingerprint(self.encoder_name)}

    def train(self, idx, generator, x=None) -> Cond:
        if self.digits:
            from ..text import caption_ids

            ids = caption_ids(self.train_labels[idx].cpu(), generator).to(self.device)
        else:
            ids = self.train_ids[idx]
        return self.table[ids]

    def val(self, start, stop, x=None) -> Cond:
        return self.table[self.val_ids[start:stop]]

    def sampling(self, n, device) -> Cond:
        """Grid prompts (held-out phrasings of digit i % 10 for the digits), cycled."""
        prompts = [self.grid_prompts[i % len(self.grid_prompts)] for i in range(n)]
        return self.encoder.encode(prompts).to(device)


class ImageCondition(ConditionSource):
    """Super-resolution (SR3): the condition of an image is its own degraded copy."""

    kind = "image"

    def __init__(self, val_set, task: str, lowres: int, image_size: int, channels: int, device):
        from ..data.degrade import check_lowres

        if task not in IMAGE_TASKS:
            raise UserError(f"{task!r}: image conditioning does {', '.join(IMAGE_TASKS)}", param="task")
        check_lowres(lowres, image_size)
        self.task, self.lowres, self.size, self.channels = task, int(lowres), int(image_size), int(channels)
        self.val_images = val_set.images.to(device)

    def condition(self, x: torch.Tensor) -> Cond:
        from ..data.degrade import downsample, superres_condition

        return Cond(image=superres_condition(downsample(x, self.lowres), self.size).to(x.dtype))

    def model_settings(self) -> dict:
        return {"cond_channels": self.channels}

    def record(self) -> dict:
        return {"kind": "image", "task": self.task, "lowres": self.lowres, "degradation": "area",
                "upsampling": "bicubic"}

    def train(self, idx, generator, x=None) -> Cond:
        if x is None:
            raise UserError("image conditioning is made from the batch's images (pass x)")
        return self.condition(x)

    def val(self, start, stop, x=None) -> Cond:
        return self.condition(self.val_images[start:stop] if x is None else x)

    def sampling(self, n, device) -> Cond:
        """The low-resolution copies of the first validation images, cycled."""
        idx = torch.arange(n) % len(self.val_images)
        return self.condition(self.val_images[idx.to(self.val_images.device)]).to(device)


def condition_source(kind: str, train_set, val_set, data: str, device, text_encoder: str = "minilm",
                     num_classes: int | None = None, task: str | None = None, lowres: int | None = None,
                     image_size: int | None = None) -> ConditionSource:
    if kind not in COND_KINDS:
        raise UserError(f"unknown conditioning {kind!r}; choose from {', '.join(COND_KINDS)}")
    if kind != "image" and task is not None:
        raise UserError(f"{task!r} belongs to image conditioning (cond 'image')", param="task")
    if kind == "image":
        if task is None or lowres is None:
            raise UserError("image conditioning needs task 'superres' and a low-resolution side lowres (e.g. 16)", param="lowres")
        size = image_size or int(train_set.images.shape[-1])
        return ImageCondition(val_set, task, lowres, size, int(train_set.images.shape[1]), device)
    if kind == "class":
        return ClassCondition(train_set, val_set, data, device, num_classes)
    if kind == "text":
        return TextCondition(train_set, val_set, data, device, text_encoder)
    return NoCondition()
