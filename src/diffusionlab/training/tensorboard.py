"""A run's metrics mirrored into TensorBoard (``--log tensorboard``; the ``[tensorboard]`` extra).

metrics.jsonl stays the run's record; with ``TrainConfig.log_to = "tensorboard"`` every line the
trainer logs is also written as scalars (train loss, learning rate, gradient norm, img/s,
validation loss - the loss plot's data - evaluation metrics, a loss object's statistics) at its
step, and every sample grid as an image, into ``run/tensorboard/``. A resumed run purges events
past its checkpoint's step, so the curves do not fold back. ``tensorboard --logdir run/`` shows
them; ``read_scalars`` reads an event folder back (tests).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError

LOG_TARGETS = ("jsonl", "tensorboard")
HINT = "pip install 'diffusionlab[tensorboard]'"


class TensorBoardLog:
    """A ``SummaryWriter`` on ``folder`` (``purge_step``: drop events from that step on)."""

    def __init__(self, folder, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise UserError(f"--log tensorboard needs the tensorboard package ({e})", param="log_to", hint=HINT) from e
        self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)

    def scalars(self, record: dict) -> None:
        """The numbers of one metrics.jsonl line, tagged by their keys, at ``record['step']``."""
        step = record.get("step")
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        """A sample grid (the PNG the trainer wrote) at ``step``."""
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            arr = np.asarray(im.convert("RGB"))
        self.writer.add_image(tag, arr, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_scalars(folder) -> dict:
    """{tag: [(step, value), ...]} of every event file under ``folder`` (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["_images"] = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    return out
