"""The trainer: loss goes down, resume is exact, crashes lose nothing, NaN stops cleanly."""
import json
import os

import pytest
import torch

from diffusionlab.training import Trainer, tiny_config
from diffusionlab.models import checkpoint as ckpt_mod
from diffusionlab.models.checkpoint import find_checkpoint, load_checkpoint
from diffusionlab.training.trainer import TrainingDiverged, lr_at


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def ema_params(trainer):
    return {k: v.detach().clone() for k, v in trainer.ema.model.state_dict().items()}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_interrupted_and_resumed_run_equals_uninterrupted_bitwise(tmp_path, grad_accum, one_thread):
    cfg = dict(max_steps=6, grad_accum=grad_accum, num_threads=1, checkpoint_every=0, sample_every=0, val_every=0)
    a = Trainer(config=tiny_config(out_dir=str(tmp_path / "a"), **cfg))
    a.train()
    b = Trainer(config=tiny_config(out_dir=str(tmp_path / "b"), **cfg))
    summary = b.train(stop_after=3)             # a simulated Ctrl-C after step 3: checkpoint and return
    assert summary["status"] == "interrupted" and summary["steps"] == 3
    c = Trainer(config=tiny_config(out_dir=str(tmp_path / "b"), **cfg), resume=True)
    assert c.step == 3
    c.train()
    for k, v in params(a).items():
        assert torch.equal(v, params(c)[k]), k
    for k, v in ema_params(a).items():
        assert torch.equal(v, ema_params(c)[k]), k
    # the metrics log of the resumed run has each step once
    steps = [r["step"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_resume_under_bf16_is_close(tmp_path, one_thread):
    cfg = dict(max_steps=4, precision="bf16", num_threads=1, checkpoint_every=0, sample_every=0, val_every=0)
    a = Trainer(config=tiny_config(out_dir=str(tmp_path / "a"), **cfg))
    a.train()
    Trainer(config=tiny_config(out_dir=str(tmp_path / "b"), **cfg)).train(stop_after=2)
    c = Trainer(config=tiny_config(out_dir=str(tmp_path / "b"), **cfg), resume=True)
    c.train()
    for k, v in params(a).items():
        assert torch.allclose(v, params(c)[k], atol=1e-5, rtol=1e-4), k


def test_training_lowers_the_loss(tmp_path):
    cfg = tiny_config(out_dir=str(tmp_path), max_steps=60, batch_size=16, lr=3e-3, val_every=30, log_every=1,
                      warmup_steps=5, checkpoint_every=0)
    Trainer(config=cfg).train()
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert vals[-1] < vals[0]


def test_outputs_of_a_run(tmp_path):
    cfg = tiny_config(out_dir=str(tmp_path), sample_every=2)
    Trainer(config=cfg).train()
    assert (tmp_path / "samples" / "step-00000002.png").is_file()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["torch_threads"] >= 1 and "torch" in run["versions"] and run["config"]["max_steps"] == 4
    assert run["cpu"]["kind"] in ("AMX + AVX-512 BF16", "AVX-512", "AVX2", "other")
    assert run["summary"]["steps"] == 4
    ck = load_checkpoint(tmp_path)
    assert ck["config"]["format_version"] == 3 and ck["train_state"]["step"] == 4
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000002", "step-00000004"]


def test_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=2, checkpoint_every=2))
    t.train()
    good = find_checkpoint(tmp_path)
    calls = {"n": 0}
    real = ckpt_mod.save_file

    def dying_save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # die after the model weights, before the EMA weights
            raise OSError("disk full")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", dying_save)
    t.cfg.max_steps = 3
    t.planned = 3
    from diffusionlab.training.trainer import WriteFailed

    with pytest.raises(WriteFailed, match="could not write .*disk full.*intact"):  # a clear error, exit 2
        t.train()
    assert find_checkpoint(tmp_path) == good
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]
    load_checkpoint(tmp_path)  # still loads


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=4, checkpoint_every=2, on_nan="stop"))
    real = t.loss_fn

    def loss(net, batch, **k):  # the trainer's one loss interface (losses.TrainingLoss)
        out = real(net, batch, **k)
        return out * float("nan") if t.step == 2 else out

    t.loss_fn = loss
    with pytest.raises(TrainingDiverged, match="loss nan at step 2"):
        t.train()
    assert find_checkpoint(tmp_path).name == "step-00000002"
    ck = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=2)).train()
    ck = find_checkpoint(tmp_path)
    (ck / "ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt_mod.CheckpointError, match="damaged"):
        load_checkpoint(tmp_path)


def test_lr_schedule_warmup_then_cosine():
    cfg = tiny_config(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 100) == pytest.approx(0.1)
    assert lr_at(9, cfg, 100) == pytest.approx(1.0)
    assert lr_at(10, cfg, 100) == pytest.approx(1.0)
    assert lr_at(55, cfg, 100) == pytest.approx(0.55)
    assert lr_at(100, cfg, 100) == pytest.approx(0.1)


class FakeClock:
    """An injected clock: each reading advances by ``tick``. The trainer reads it twice per step,
    so every step "takes" exactly ``tick`` of the time budget; no wall-clock time is involved."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_time_budget_stops_training(tmp_path):
    # every step takes 0.25 units of the fake clock: a budget of 3 units is exactly 12 steps
    cfg = tiny_config(out_dir=str(tmp_path), max_steps=None, time_budget=3.0, checkpoint_every=0, val_every=0)
    t = Trainer(config=cfg, clock=FakeClock(0.25))
    t.train()
    assert t.step == 12 and t.elapsed == 12 * 0.25  # both from the fake clock


def test_time_budget_replans_steps_from_the_measured_speed(tmp_path):
    # from step 30 on the planned steps follow from the measured speed: 0.25 s per step of 20 s -> 80
    cfg = tiny_config(out_dir=str(tmp_path), max_steps=None, time_budget=20.0, checkpoint_every=0, val_every=0,
                      log_every=1000)
    t = Trainer(config=cfg, clock=FakeClock(0.25))
    t.train()
    assert t.planned == 80 and t.step == 80


def test_bad_data_is_reported_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an embedded dataset"):
        Trainer(config=tiny_config(out_dir=str(tmp_path), data=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="(?i)no images"):
        Trainer(config=tiny_config(out_dir=str(tmp_path / "o"), data=str(empty),
                                   model=tiny_config().model.__class__(dim=8, dim_mults=(1, 2), channels=3, groups=4)))
    assert not (tmp_path / "o").exists()


def test_guide_snapshot_is_the_early_ema_and_survives_resume(tmp_path, one_thread):
    from diffusionlab.models.loading import load_denoiser

    cfg = dict(max_steps=6, guide_at=0.5, num_threads=1, checkpoint_every=0, sample_every=0, val_every=0)
    early = Trainer(config=tiny_config(out_dir=str(tmp_path / "e"), **{**cfg, "guide_at": None, "max_steps": 3}))
    early.train()
    a = Trainer(config=tiny_config(out_dir=str(tmp_path / "a"), **cfg))
    a.train()
    assert a.guide_step == 3
    for k, v in ema_params(early).items():      # the snapshot is the EMA at step 3, untouched later
        assert torch.equal(a.guide_sd[k], v), k
    ck = load_checkpoint(tmp_path / "a")
    assert ck["config"]["guide_step"] == 3 and ck["guide"].keys() == ck["ema"].keys()
    b = Trainer(config=tiny_config(out_dir=str(tmp_path / "b"), **cfg))
    b.train(stop_after=4)
    c = Trainer(config=tiny_config(out_dir=str(tmp_path / "b"), **cfg), resume=True)
    c.train()
    assert c.guide_step == 3 and all(torch.equal(c.guide_sd[k], v) for k, v in a.guide_sd.items())
    den = load_denoiser(tmp_path / "a", weights="guide")
    assert all(torch.equal(p, a.guide_sd[k]) for k, p in den.net.state_dict().items())


def test_guide_errors(tmp_path):
    from diffusionlab.models.loading import load_denoiser
    from diffusionlab.models.checkpoint import CheckpointError

    with pytest.raises(ValueError, match="guide_at"):
        Trainer(config=tiny_config(out_dir=str(tmp_path / "x"), guide_at=1.5))
    Trainer(config=tiny_config(out_dir=str(tmp_path / "n"), max_steps=2)).train()
    with pytest.raises(CheckpointError, match="no guide snapshot"):
        load_denoiser(tmp_path / "n", weights="guide")
    with pytest.raises(ValueError, match="unknown weights"):
        load_denoiser(tmp_path / "n", weights="best")
