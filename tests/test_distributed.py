"""Multi-process training (core.distributed, the Trainer under torchrun / accelerate): N gloo
processes on the CPU make the update of one process with the same global batch.

Tolerance: parameters after k AdamW steps at lr 0.01 equal one process's to 1e-4 absolute, 1% of
one step's size (the gradients are the same sums in another order; AdamW's normalisation makes
float32 rounding of near-zero gradients visible, 2e-5 at most in practice); a run with another
seed differs by far more (checked); the ranks equal each other bitwise (one all-reduced
gradient, one optimizer). The default suite runs one 2-process case; ``make
test-ddp`` (marker ``ddp``) runs the plain, class and text models with and without gradient
accumulation, importance sampling, resume across world sizes, the CLI under torchrun and
accelerate, a killed and a stopped rank, and --compile."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusionlab.core import distributed
from diffusionlab.core.samplers import SAMPLERS
from diffusionlab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "ddp_worker.py")
ATOL = 1e-4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int, **extra) -> dict:
    """torchrun's environment for one rank (what the launchers set)."""
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
           "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **extra}
    if world == 1:
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k)
    return env


def _start(cmd: list, world: int, cwd=None, **extra) -> list:
    port = _port()
    return [subprocess.Popen(cmd, env=_env(r, world, port, **extra), cwd=cwd or ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(world)]


def _wait(procs, timeout=240) -> list:
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, o, e))
    return out


def run_worker(out: Path, world: int, *args) -> list:
    """The worker in ``world`` processes (torchrun's environment); every rank must succeed."""
    res = _wait(_start([sys.executable, WORKER, "--out", str(out), *map(str, args)], world))
    for code, o, e in res:
        assert code == 0, e[-3000:]
    return [load_file(out / f"rank{r}.safetensors") for r in range(world)]


def assert_close(a: dict, b: dict, atol=ATOL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def assert_equal(a: dict, b: dict) -> None:
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _equal_to_one_process(tmp_path, kind: str, accum: int, steps: int = 3, batch: int = 8,
                          one_accum: int | None = None) -> None:
    """2 processes with accumulation ``accum`` against one with ``one_accum`` (default 2 x accum:
    the global batch split as many ways)."""
    one_accum = one_accum or accum * 2
    one = run_worker(tmp_path / "one", 1, "--kind", kind, "--accum", one_accum, "--steps", steps, "--batch", batch)[0]
    r0, r1 = run_worker(tmp_path / "two", 2, "--kind", kind, "--accum", accum, "--steps", steps, "--batch", batch)
    assert_equal(r0, r1)              # the ranks hold one model
    assert_close(r0, one)             # ... the one process's
    other = run_worker(tmp_path / "seed", 1, "--kind", kind, "--accum", one_accum, "--steps", steps, "--batch",
                       batch, "--seed", 1)[0]
    assert any((other[k] - one[k]).abs().max() > 20 * ATOL for k in one)  # the tolerance tells runs apart


def test_two_processes_make_the_update_of_one(tmp_path):
    """The default suite's case: 2 gloo processes with gradient accumulation 2 against one process
    with accumulation 4 (the same global batch of 8, split 4 ways either way)."""
    _equal_to_one_process(tmp_path, "class", accum=2)


@pytest.mark.ddp
@pytest.mark.parametrize("kind", ["plain", "class", "text"])
@pytest.mark.parametrize("accum", [1, 2])
def test_n_processes_equal_one_for_each_model(tmp_path, kind, accum):
    _equal_to_one_process(tmp_path, kind, accum)


@pytest.mark.ddp
def test_importance_sampling_learns_from_the_whole_global_batch(tmp_path):
    """Improved DDPM's importance sampler keeps a loss history: every rank records the whole
    micro-batch in global order, so its t draws (after it warms up) are those of one process
    with the same micro-batches (the history moves between micro-batches, so here - unlike
    the other losses - the accumulation must match too)."""
    _equal_to_one_process(tmp_path, "importance", accum=1, steps=30, batch=16, one_accum=1)


@pytest.mark.ddp
@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes_continues_exactly(tmp_path, first, second):
    straight = run_worker(tmp_path / "straight", 1, "--kind", "class", "--steps", 4)[0]
    run_worker(tmp_path / "run", first, "--kind", "class", "--steps", 4, "--stop-after", 2)
    resumed = run_worker(tmp_path / "run", second, "--kind", "class", "--steps", 4, "--resume")[0]
    assert_close(resumed, straight)


@pytest.mark.ddp
def test_validation_and_evaluation_are_split_and_gathered(tmp_path):
    """Validation losses and the sample-quality evaluation of 2 processes (each its share of the
    samples, gathered) are one process's numbers."""
    import json

    for world in (1, 2):
        run_worker(tmp_path / f"w{world}", world, "--steps", 2, "--val-every", 2, "--eval-every", 2,
                   "--image-size", 16)  # the digit classifier's smallest input
    recs = [[json.loads(l) for l in (tmp_path / f"w{w}" / "metrics.jsonl").read_text().splitlines()] for w in (1, 2)]
    val = [next(r for r in rs if "val_loss" in r) for rs in recs]
    ev = [next(r for r in rs if "eval_fd" in r) for rs in recs]
    assert val[0]["val_loss"] == pytest.approx(val[1]["val_loss"], rel=1e-4)
    assert ev[0]["eval_fd"] == pytest.approx(ev[1]["eval_fd"], rel=1e-3)
    assert len(recs[0]) == len(recs[1])  # one writer: no record twice


def _cli(tmp_path, launcher: list, world: int):
    out = tmp_path / "cli"
    cmd = [*launcher, "-m", "diffusionlab", "train", "--preset", "tiny", "--data", "digits", "--image-size", "8",
           "--steps", "4", "--batch-size", "8", "--grad-accum", "2", "--out", str(out), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"status"') == 1  # one summary: rank 0 prints
    run = __import__("json").loads((out / "run.json").read_text())
    assert run["world_size"] == world
    return out


@pytest.mark.parametrize("world", [1, 2])
def test_the_command_exits_with_its_status_and_all_its_output(world):
    """``python -m diffusionlab`` as one rank of a launched run leaves through ``os._exit`` (torch's
    gloo teardown at interpreter exit can abort a rank); its block-buffered output still arrives
    whole and its exit status is the command's."""
    env = _env(0, world, _port())  # rank 0: the rank that prints
    env.pop("PYTHONUNBUFFERED", None)  # block-buffered output, as a launcher's pipe gives
    ok = subprocess.run([sys.executable, "-m", "diffusionlab", "samplers"], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    bad = subprocess.run([sys.executable, "-m", "diffusionlab", "sample", "--steps", "x"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0
    assert all(name in ok.stdout for name in SAMPLERS) and "NFE/step" in ok.stdout  # the whole table, flushed
    assert bad.returncode == 2 and "error" in bad.stderr


@pytest.mark.ddp
def test_the_cli_runs_unchanged_under_torchrun(tmp_path):
    _cli(tmp_path, [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"], 2)


@pytest.mark.ddp
def test_the_cli_runs_unchanged_under_accelerate(tmp_path):
    pytest.importorskip("accelerate")
    _cli(tmp_path, [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines",
                    "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"], 2)


def _lose_a_rank(tmp_path, sig, timeout_s: int) -> tuple:
    """Two ranks of a long run; ``sig`` to rank 1 once rank 0 has logged a step. Returns (rank
    0's exit code, stderr, seconds from the signal to its exit)."""
    out = tmp_path / "lost"
    procs = _start([sys.executable, WORKER, "--out", str(out), "--steps", "100000", "--kind", "plain"], 2,
                   DIFFUSIONLAB_DIST_TIMEOUT=str(timeout_s))
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "metrics.jsonl").exists(), procs[0].stderr.read() if procs[0].poll() is not None else "no step"
    os.kill(procs[1].pid, sig)
    t0 = time.time()
    try:
        _, err = procs[0].communicate(timeout=timeout_s + 60)
    finally:
        procs[1].kill()
        procs[1].communicate()
    return procs[0].returncode, err, time.time() - t0


@pytest.mark.ddp
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_a_lost_rank_ends_the_others_with_a_clear_message(tmp_path, sig):
    """A killed rank (its sockets close) or a stopped one (silent: the collectives' timeout)
    makes rank 0 exit with one line naming the last checkpoint, within the timeout."""
    timeout_s = 20
    code, err, took = _lose_a_rank(tmp_path, sig, timeout_s)
    assert code == 2, err[-2000:]
    assert "another process of the run died or stopped answering" in err
    assert took < timeout_s + 30


@pytest.mark.ddp
def test_compile_trains_the_same_model(tmp_path):
    """--compile (torch.compile in place): the same parameters as eager, to compiler tolerance."""
    from diffusionlab.training import Trainer

    from ddp_worker import config  # noqa: E402 (tests/ is on sys.path under pytest)

    res = []
    for compiled in (False, True):
        t = Trainer(config=config("plain", str(tmp_path / f"c{compiled}"), 2, 1, 8, compile=compiled))
        t.train()
        res.append({k: v.detach() for k, v in t.model.state_dict().items()})
    assert_close(res[0], res[1], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("precision,extra", [("fp16", {}), ("bf16", {"grad_checkpoint": True}),
                                             ("bf16", {"compile": True})])
def test_the_cuda_paths_train(tmp_path, precision, extra):
    """On a GPU: fp16 with the gradient scaler, bf16 with gradient checkpointing and with
    torch.compile train a few finite steps and write a checkpoint that loads."""
    from diffusionlab.models.checkpoint import load_checkpoint
    from diffusionlab.training import Trainer
    from diffusionlab.training.config import tiny_config

    t = Trainer(config=tiny_config(data="digits", image_size=8, device="cuda", precision=precision, max_steps=4,
                                   out_dir=str(tmp_path), **extra))
    assert (t.scaler is not None) == (precision == "fp16")
    t.train()
    ck = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


# ------------------------------------------------------------------ a world of one (fast, in process)
def test_a_world_of_one_initialises_nothing(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    w = distributed.init("cpu")
    assert (w.rank, w.size, w.main) == (0, 1, True) and not distributed.active()
    t = torch.arange(5.0)
    assert distributed.gather_cat(t) is t and distributed.gather_objects(3) == [3] and distributed.broadcast(4) == 4


@pytest.mark.parametrize("n,size", [(10, 2), (11, 3), (2, 4), (0, 2)])
def test_shards_cover_the_items_once_in_order(n, size):
    parts = [distributed.shard(n, distributed.World(r, size)) for r in range(size)]
    assert [i for p in parts for i in p] == list(range(n))


def test_a_global_batch_the_processes_do_not_divide_is_refused():
    from diffusionlab.training.config import tiny_config
    from diffusionlab.training.trainer import check_batch

    check_batch(tiny_config(batch_size=8, grad_accum=2), distributed.World(0, 2))
    with pytest.raises(UserError, match="does not split into 2 process"):
        check_batch(tiny_config(batch_size=6, grad_accum=2), distributed.World(0, 2))
    with pytest.raises(UserError, match="at least 1"):
        check_batch(tiny_config(batch_size=8, grad_accum=0), distributed.World())


def test_batchnorm_is_refused_for_multi_process_training():
    from diffusionlab.training.trainer import _refuse_batchnorm

    _refuse_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4)))
    with pytest.raises(UserError, match="BatchNorm"):
        _refuse_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)))


def test_the_timeout_is_read_and_checked(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_s() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "30")
    assert distributed.timeout_s() == 30.0
    for bad in ("0", "-1", "nan", "inf", "ten"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(UserError, match="positive number of seconds"):
            distributed.timeout_s()


def test_one_evaluation_share_per_rank_is_the_same_samples():
    """sample_many over index ranges: the shares concatenated are the whole set, bitwise."""
    from diffusionlab.core.sampling import sample_many

    def den(x, sigma, cond=None):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    whole = sample_many(den, (1, 4, 4), 7, "euler", 3, seed=5, progress=False)
    parts = [sample_many(den, (1, 4, 4), 7, "euler", 3, seed=5, progress=False,
                         indices=distributed.shard(7, distributed.World(r, 3))) for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_gradient_checkpointing_gives_the_same_gradients(arch):
    from diffusionlab.core.cond import Cond
    from diffusionlab.nn import build_network, network_config

    torch.manual_seed(0)
    cfg = {"unet": dict(dim=8, dim_mults=(1, 2), groups=4, channels=1, dropout=0.1),
           "dit": dict(hidden=32, depth=2, heads=2, patch_size=2, channels=1)}[arch]
    net = build_network(arch, network_config(arch, cfg)).train()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    grads = []
    for ckpt in (False, True):
        net.grad_checkpoint = ckpt
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        net(x, t, Cond()).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.ddp
@pytest.mark.parametrize("command", ["finetune", "dpo", "distill", "train-autoencoder", "train-classifier"])
def test_every_command_on_the_trainer_runs_under_torchrun(tmp_path, command):
    """The other commands on the one trainer under torchrun: exit 0, one summary (rank 0 prints),
    a checkpoint that verifies."""
    from test_reliability import COMMANDS, assert_every_checkpoint_intact

    root = tmp_path / "base"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    tiny = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "diffusionlab", "train", *tiny, "--cond", "class", "--steps", "2",
                        "--out", str(root / "base")], env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    if command == "dpo":
        from test_reliability import write_pairs_folder

        write_pairs_folder(root / "pairs")
    key = {"distill": "distill-consistency"}.get(command, command)
    args = COMMANDS[key](root)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "diffusionlab",
                        *map(str, args), "--out", str(tmp_path / "run")], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"steps"') == 1
    assert_every_checkpoint_intact(tmp_path / "run")
