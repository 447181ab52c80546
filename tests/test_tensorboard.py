"""--log tensorboard: the event files carry what metrics.jsonl carries (read back with
TensorBoard's own reader), the sample grids as images, and a resumed run continues them."""
from __future__ import annotations

import json

import pytest

from diffusionlab.apps.cli import main

pytest.importorskip("tensorboard")
RUN = ["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress",
       "--log", "tensorboard", "--sample-every", "2"]


def test_tensorboard_events_match_metrics_jsonl(tmp_path):
    from diffusionlab.training.tensorboard import read_scalars

    out = tmp_path / "run"
    assert main([*RUN, "--steps", "2", "--out", str(out)]) == 0
    assert main([*RUN, "--steps", "4", "--resume", "--out", str(out)]) == 0
    events = read_scalars(out / "tensorboard")
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "val_loss"):
        want = [(r["step"], r[key]) for r in lines if isinstance(r.get(key), float)]
        got = sorted(events[key])
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert all(abs(a - b) <= 1e-6 * max(1, abs(b)) for (_, a), (_, b) in zip(got, want)), key
    assert events["_images"]["samples"] == [2, 4]


def test_log_target_is_checked(tmp_path, capsys):
    assert main([*RUN[:-3], "--log", "wandb", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
