"""Reliability, tried the way clusters, full disks and bad batches break runs (make
test-reliability; marker ``reliability``). The default suite runs a fast subset: two kill trials,
one of each injected write error, the signals, the numerical faults.

Kill trials start a real training run (``diffusionlab train``, a tiny model, one thread, fp32, so
runs compare bitwise), kill it with SIGKILL - at a random moment, or at a deterministic fault point
of ``core.faults`` (each file of a checkpoint, before the rename, the ``latest`` pointer,
mid-prune) - resume it with ``--resume`` until it completes, and require: no checkpoint ever
damaged or half-written (every step folder verifies), and final weights, EMA and optimizer state
equal, bitwise, to an uninterrupted run with the same seed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from diffusionlab.core.faults import FAULT_ENV
from diffusionlab.models.checkpoint import find_checkpoint, step_dirs, verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
TRAIN = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--steps", str(STEPS), "--checkpoint-every",
         "2", "--val-every", "0", "--threads", "1", "--seed", "3", "--no-progress"]
CHECKPOINT_POINTS = ("checkpoint.model", "checkpoint.ema", "checkpoint.train_state", "checkpoint.train_state_json",
                     "checkpoint.config", "checkpoint.manifest", "checkpoint.rename", "checkpoint.latest",
                     "checkpoint.prune")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **extra}


def cli(*args, fault: str | None = None, **kw) -> subprocess.CompletedProcess:
    env = _env(**({FAULT_ENV: fault} if fault else {}))
    return subprocess.run([sys.executable, "-m", "diffusionlab", *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=kw.get("timeout", 300))


def final_state(run: Path) -> dict:
    ck = find_checkpoint(run)
    return {name: load_file(str(ck / f"{name}.safetensors")) for name in ("model", "ema", "train_state")}


def assert_bitwise(a: dict, b: dict) -> None:
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            if k.startswith("rng."):  # torch's global RNG state: not a training draw (those are keyed)
                continue
            assert a[name][k].equal(b[name][k]), f"{name}.{k}"


def assert_every_checkpoint_intact(run: Path) -> None:
    for ck in step_dirs(run / "checkpoints"):
        verify_checkpoint(ck)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    r = cli("train", *TRAIN, "--out", run)
    assert r.returncode == 0, r.stderr
    return final_state(run)


def _resume_to_the_end(run: Path, tries: int = 20) -> int:
    """--resume until the run completes; returns how many resumes it took."""
    for n in range(1, tries + 1):
        r = cli("train", *TRAIN, "--out", run, "--resume")
        assert r.returncode == 0, r.stderr[-3000:]
        assert_every_checkpoint_intact(run)
        if json.loads((run / "run.json").read_text())["summary"]["steps"] == STEPS:
            return n
    raise AssertionError("the run never completed")


def kill_at_point(run: Path, point: str, nth: int = 2) -> subprocess.CompletedProcess:
    return cli("train", *TRAIN, "--out", run, fault=f"{point}#{nth}=kill")


def kill_at_random(run: Path, seconds: float, rng: random.Random, resume: bool = False) -> bool:
    """Start (or resume) the run and SIGKILL it after a random moment; True when it was killed."""
    args = [sys.executable, "-m", "diffusionlab", "train", *TRAIN, "--out", str(run)] + (["--resume"] if resume else [])
    p = subprocess.Popen(args, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.2, seconds))
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    return killed


@pytest.mark.parametrize("point", ["checkpoint.ema", "checkpoint.rename"])
def test_a_kill_at_a_fault_point_loses_nothing(tmp_path, reference, point):
    """Default suite: two deterministic kill trials (mid-checkpoint and before the rename)."""
    run = tmp_path / "run"
    r = kill_at_point(run, point)
    assert r.returncode == -signal.SIGKILL
    assert_every_checkpoint_intact(run)
    _resume_to_the_end(run)
    assert_bitwise(final_state(run), reference)


@pytest.mark.reliability
@pytest.mark.parametrize("point", CHECKPOINT_POINTS)
@pytest.mark.parametrize("nth", [1, 3])
def test_every_checkpoint_fault_point(tmp_path, reference, point, nth):
    run = tmp_path / "run"
    r = kill_at_point(run, point, nth)
    assert r.returncode in (-signal.SIGKILL, 0)  # a point a short run never reaches lets it finish
    assert_every_checkpoint_intact(run)
    _resume_to_the_end(run)
    assert_bitwise(final_state(run), reference)


@pytest.mark.reliability
@pytest.mark.parametrize("trial", range(20))
def test_kills_at_random_moments(tmp_path, reference, trial):
    rng = random.Random(trial)
    run = tmp_path / "run"
    kills = 0
    for attempt in range(3):  # up to three kills of the same run, then resume to the end
        kills += kill_at_random(run, 6.0, rng, resume=attempt > 0)
        assert_every_checkpoint_intact(run)
    _resume_to_the_end(run)
    assert_bitwise(final_state(run), reference)


# ------------------------------------------------------------------ signals (what a scheduler and a user send)
def _signal_run(tmp_path, sigs: list, delay: float = 4.0):
    """A long CLI run; once it has logged a step, send ``sigs`` (0.05 s apart)."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "diffusionlab", "train", *TRAIN[:-1], "--no-progress", "--out", str(run)]
    args[args.index("--steps") + 1] = "100000"
    p = subprocess.Popen(args, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    time.sleep(delay * random.random())
    for sig in sigs:
        p.send_signal(sig)
        time.sleep(0.05)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err, run


@pytest.mark.parametrize("sig,code,status", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_write_a_final_checkpoint(tmp_path, sig, code, status):
    rc, out, err, run = _signal_run(tmp_path, [sig])
    assert rc == code, err[-2000:]
    summary = json.loads((run / "run.json").read_text())["summary"]
    assert summary["status"] == status
    assert find_checkpoint(run).name == f"step-{summary['steps']:08d}"  # the stop step itself was saved
    assert "continue with --resume" in err
    assert_every_checkpoint_intact(run)


def test_a_second_signal_stops_at_once_and_corrupts_nothing(tmp_path):
    rc, out, err, run = _signal_run(tmp_path, [signal.SIGTERM, signal.SIGTERM])
    # 143 from the handler, or death by the signal itself (-15 here, 143 in a shell) when the second
    # one lands after the command had finished its work and was exiting
    assert rc in (143, -signal.SIGTERM), err[-2000:]
    assert "Traceback" not in err
    assert_every_checkpoint_intact(run)


# ------------------------------------------------------------------ injected write errors
def _trainer(tmp_path, **kw):
    from diffusionlab.training import Trainer
    from diffusionlab.training.config import tiny_config

    cfg = dict(data="digits", image_size=8, max_steps=6, checkpoint_every=2, val_every=0, num_threads=1,
               out_dir=str(tmp_path / "run"), sample_every=3, n_grid=4)
    return Trainer(config=tiny_config(**{**cfg, **kw}))


@pytest.fixture()
def fault(monkeypatch):
    from diffusionlab.core import faults

    def set_fault(spec: str) -> None:
        faults.reset()
        monkeypatch.setenv(FAULT_ENV, spec)

    yield set_fault
    faults.reset()


@pytest.mark.parametrize("point,error", [("checkpoint.ema#2", "ENOSPC"), ("checkpoint.manifest#2", "EROFS"),
                                         ("write:metrics.jsonl#5", "EACCES"), ("write:step-*.png", "ENOSPC"),
                                         ("write:run.json#2", "EROFS")])
def test_a_failed_write_stops_cleanly_naming_the_file(tmp_path, fault, point, error):
    """Default: stop (exit 2 in the CLI) with the file named; the previous checkpoint stays intact."""
    from diffusionlab.training.trainer import WriteFailed

    t = _trainer(tmp_path)
    fault(f"{point}={error}")
    with pytest.raises(WriteFailed, match="could not write .*(ema|manifest|metrics|png|run.json)") as e:
        t.train()
    assert "intact" in str(e.value)
    run = tmp_path / "run"
    assert_every_checkpoint_intact(run)
    assert not list(run.glob("checkpoints/*.tmp-*"))  # no half-written checkpoint left behind


def test_on_write_error_continue_trains_on_without_the_file(tmp_path, fault):
    t = _trainer(tmp_path, on_write_error="continue")
    fault("checkpoint.model#2+=ENOSPC")  # every checkpoint after the first fails
    summary = t.train()
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["write_errors"] >= 2
    assert find_checkpoint(tmp_path / "run").name == "step-00000002"  # the one that was written
    assert_every_checkpoint_intact(tmp_path / "run")


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path):
    r = cli("train", *TRAIN, "--out", tmp_path / "run", fault="checkpoint.config#2=ENOSPC")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error: could not write" in r.stderr and "config.json" in r.stderr and "Traceback" not in r.stderr
    assert_every_checkpoint_intact(tmp_path / "run")
    assert find_checkpoint(tmp_path / "run").name == "step-00000002"


# ------------------------------------------------------------------ numerical faults
def _poison_loss(t, steps: set, value=float("nan")):
    real = t.loss_fn

    def loss(net, batch, **k):
        out = real(net, batch, **k)
        return out * value if t.step in steps else out

    t.loss_fn = loss


def test_a_nan_batch_is_skipped_and_counted(tmp_path):
    t = _trainer(tmp_path)
    real_batch = t.batch

    def batch(micro):
        b = real_batch(micro)
        if micro == 3:
            b.x[0, 0, 0, 0] = float("nan")
        return b

    t.batch = batch
    summary = t.train()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 6
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_step"] for r in recs if "skipped_step" in r] == [3]


def test_a_skipped_step_leaves_the_weights_alone(tmp_path):
    t = _trainer(tmp_path, checkpoint_every=0, sample_every=0)
    _poison_loss(t, {2}, float("inf"))
    t.train(stop_after=2)
    w = {k: v.clone() for k, v in t.model.state_dict().items()}
    ema = {k: v.clone() for k, v in t.ema.model.state_dict().items()}
    t.train(stop_after=3)  # step 2 -> 3 is the poisoned one
    assert all(v.equal(t.model.state_dict()[k]) for k, v in w.items())
    assert all(v.equal(t.ema.model.state_dict()[k]) for k, v in ema.items())
    assert t.skipped == [2]


def test_nan_gradients_are_found_on_their_step(tmp_path):
    t = _trainer(tmp_path, checkpoint_every=0, sample_every=0)
    p = next(t.model.parameters())
    p.register_hook(lambda g: g * float("nan") if t.step == 4 else g)
    t.train()
    assert t.skipped == [4]


def test_on_nan_stop_stops_with_the_hint(tmp_path):
    from diffusionlab.training.trainer import TrainingDiverged

    t = _trainer(tmp_path, on_nan="stop")
    _poison_loss(t, {3})
    with pytest.raises(TrainingDiverged, match="loss nan at step 3; stopping.*lower learning rate"):
        t.train()
    assert find_checkpoint(tmp_path / "run").name == "step-00000002"


def test_a_run_that_diverges_repeatedly_stops(tmp_path):
    from diffusionlab.training.trainer import NAN_SKIP_LIMIT, TrainingDiverged

    t = _trainer(tmp_path, max_steps=20, checkpoint_every=0, sample_every=0)
    _poison_loss(t, set(range(2, 20)))
    with pytest.raises(TrainingDiverged, match=f"{NAN_SKIP_LIMIT[0] + 1} non-finite steps within"):
        t.train()
    assert len(t.skipped) == NAN_SKIP_LIMIT[0]


def test_fp16_overflow_is_the_grad_scalers_to_skip(tmp_path):
    """A forced overflow (inf gradients) under fp16: the scaler skips the step and halves its
    scale; it is not a non-finite step of on_nan."""
    import torch

    t = _trainer(tmp_path, precision="fp16", checkpoint_every=0, sample_every=0)
    assert t.scaler is not None
    p = next(t.model.parameters())
    p.register_hook(lambda g: g * float("inf") if t.step == 3 else g)
    t.train(stop_after=3)
    scale = t.scaler.get_scale()
    w = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train(stop_after=4)
    assert t.scaler.get_scale() == scale / 2 and t.skipped == []
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in w.items())  # the scaler skipped the step
    t.train()
    assert all(torch.isfinite(v).all() for v in t.model.state_dict().values())


# ------------------------------------------------------------------ every other command on the one trainer
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny class-conditional base (8x8 digits) for finetune, dpo and distill, and a pairs folder."""
    root = tmp_path_factory.mktemp("base")
    r = cli("train", *TRAIN, "--cond", "class", "--steps", "4", "--out", root / "base")
    assert r.returncode == 0, r.stderr
    write_pairs_folder(root / "pairs")
    return root


def write_pairs_folder(pairs: Path) -> Path:
    """16 preference pairs: a digit-3 image chosen over a digit-5 image, under class 3."""
    from diffusionlab.data.datasets import load_image_sets
    from diffusionlab.data.folder import export_pngs
    from diffusionlab.data.pairs import write_pairs

    tr, _ = load_image_sets("digits", 8, 1)
    threes, fives = tr.images[tr.labels == 3][:16], tr.images[tr.labels == 5][:16]
    chosen, rejected = export_pngs(threes, pairs / "images", 0), export_pngs(fives, pairs / "images", 1000)
    write_pairs(pairs, [{"chosen": c.relative_to(pairs).as_posix(), "rejected": q.relative_to(pairs).as_posix(),
                         "class": 3} for c, q in zip(chosen, rejected)])
    return pairs


RUN = ["--steps", "6", "--checkpoint-every", "2", "--val-every", "0", "--threads", "1", "--no-progress",
       "--batch-size", "8"]
COMMANDS = {
    "finetune": lambda b: ["finetune", "--ckpt", b / "base", *RUN],
    "finetune-full": lambda b: ["finetune", "--ckpt", b / "base", "--full", *RUN],
    "dpo": lambda b: ["dpo", "--ckpt", b / "base", "--pairs", b / "pairs", *RUN],
    "distill-consistency": lambda b: ["distill", "--ckpt", b / "base", "--method", "consistency", *RUN],
    "distill-progressive": lambda b: ["distill", "--ckpt", b / "base", "--method", "progressive",
                                      "--start-steps", "8", *RUN],
    "train-autoencoder": lambda b: ["train-autoencoder", "--data", "digits", "--image-size", "8", "--dim", "8",
                                    "--steps", "6", "--batch-size", "8", "--no-progress"],
    "train-classifier": lambda b: ["train-classifier", "--data", "digits", "--image-size", "8", "--steps", "6",
                                   "--batch-size", "8"],
}


def _weights(run: Path) -> dict:
    ck = find_checkpoint(run)
    return {name: load_file(str(ck / f"{name}.safetensors")) for name in ("model", "ema")}


@pytest.mark.reliability
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_on_the_trainer_survives_a_kill(tmp_path, base, command):
    """Killed at its first checkpoint's rename, resumed to the end: the weights of an
    uninterrupted run, bitwise."""
    args = COMMANDS[command](base)
    r = cli(*args, "--out", tmp_path / "straight", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli(*args, "--out", tmp_path / "killed", fault="checkpoint.rename#1=kill", timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    for _ in range(5):
        r = cli(*args, "--out", tmp_path / "killed", "--resume", timeout=600)
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stderr[-3000:]
    assert_every_checkpoint_intact(tmp_path / "killed")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert_bitwise(a, b)
