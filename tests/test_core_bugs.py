"""The silent-failure bugs of the core review, one test each (every one failed before the fix),
and the whole sequence through the command line."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import diffusionlab as dl
from diffusionlab.models import checkpoint as ck
from diffusionlab.apps.cli import main
from diffusionlab.core.denoiser import DenoiserWrapper, DiscreteDenoiser
from diffusionlab.core.cfg import ClassifierFree
from diffusionlab.core.cond import Cond
from diffusionlab.core.guidance import Autoguided, ClassifierGuided, Clipped, DynamicThreshold, ReconstructionGuided
from diffusionlab.core.rng import per_sample_generators
from diffusionlab.core.sampling import CountingDenoiser, sample_many
from diffusionlab.core.schedules import DiscreteSchedule
from diffusionlab.training import Trainer, tiny_config
from diffusionlab.core.cond import CondSpec
from diffusionlab.core.protocol import Network
from diffusionlab.apps.serve.jobs import Job
from diffusionlab.apps.serve.work import _Guard

DIGITS = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]


# ------------------------------------------------------------------ 1. wrappers on learned variance
class WideLearnedVarianceNet(Network):
    """2C output channels: an x0 'prediction' far outside [-1, 1], and a variance channel; class
    labels (3 classes) shift the prediction, the null label does not."""

    channels, out_channels = 1, 2
    cond_spec = CondSpec(kind="class", num_classes=3)
    learned_variance = True

    def forward(self, x, t, cond):
        shift = 0.0
        if cond.labels is not None:
            shift = torch.where(cond.null_mask(x.shape[0]), 0.0, 0.5 * cond.labels.float()).reshape(-1, 1, 1, 1)
        return torch.cat([3 * x + 2.5 + shift, torch.tanh(x) * 0 + 0.3], dim=1)


def _lv_denoiser(scale=1.0):
    net = WideLearnedVarianceNet()
    net.scale = scale
    return DiscreteDenoiser(net, DiscreteSchedule.from_name("linear", 50), "x0")


class HalfNet(torch.nn.Module):
    def forward(self, x, t, cond=None):
        return 0.5 * x


WRAPPERS = {
    Clipped: lambda d: Clipped(d),
    DynamicThreshold: lambda d: DynamicThreshold(d, p=0.9),
    Autoguided: lambda d: Autoguided(d, DiscreteDenoiser(HalfNet(), DiscreteSchedule.from_name("linear", 50), "x0"), 2.0),
    CountingDenoiser: lambda d: CountingDenoiser(d),
    ClassifierFree: lambda d: ClassifierFree(d, 2.0, negative=Cond(labels=torch.tensor([1]))),
    ClassifierGuided: lambda d: ClassifierGuided(d, lambda x, s: 3 * x.flatten(1)[:, :3], 1, 2.0),
    ReconstructionGuided: lambda d: ReconstructionGuided(d, torch.full((1, 1, 4, 4), 0.5), torch.ones(1, 1, 4, 4), 1.0),
    _Guard: lambda d: _Guard(d, Job(lambda job: None)),     # the page's stop-and-count guard
}
PASS_THROUGH = (CountingDenoiser, _Guard)  # wrappers that only count or stop, never change x0


def test_every_wrapper_is_covered():
    import diffusionlab.apps.serve.work  # noqa: F401 (registers the subclasses)
    import diffusionlab.core.cfg  # noqa: F401
    import diffusionlab.core.guidance  # noqa: F401
    import diffusionlab.pipelines.inpaint  # noqa: F401

    assert set(DenoiserWrapper.__subclasses__()) <= set(WRAPPERS)


@pytest.mark.parametrize("kind", list(WRAPPERS), ids=lambda k: k.__name__)
def test_wrappers_wrap_the_learned_variance_path(kind):
    den = _lv_denoiser()
    wrapped = WRAPPERS[kind](den)
    assert wrapped.info.learned_variance
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((3,), 2.0)
    x0, frac = wrapped.denoise_with_variance(x, sigma)
    assert torch.allclose(x0, wrapped(x, sigma))                # the same x0 as the wrapper's call
    assert torch.allclose(frac, den.denoise_with_variance(x, sigma)[1])  # the model's own variance
    if kind not in PASS_THROUGH:
        assert not torch.allclose(x0, den(x, sigma))            # and the wrapper did act on it


def test_threshold_changes_ddpm_sampling_of_a_learned_variance_model():
    den = _lv_denoiser()
    a = dl.sample(den, (4, 1, 4, 4), sampler="ddpm", steps=5, seed=1)
    b = dl.sample(Clipped(den), (4, 1, 4, 4), sampler="ddpm", steps=5, seed=1)
    assert not torch.allclose(a, b) and b.abs().max() <= 1.0 + 1e-6


# ------------------------------------------------------------------ 2. training into a used folder
def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_into_a_run_folder_is_refused_and_writes_nothing(tmp_path, capsys):
    assert main(["train", *DIGITS, "--steps", "2", "--out", str(tmp_path)]) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", *DIGITS, "--steps", "2", "--seed", "5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "resume" in err and "overwrite" in err
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_the_run(tmp_path):
    assert main(["train", *DIGITS, "--steps", "2", "--out", str(tmp_path)]) == 0
    old = (tmp_path / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes()
    assert main(["train", *DIGITS, "--steps", "2", "--seed", "5", "--out", str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes() != old
    assert json.loads((tmp_path / "run.json").read_text())["config"]["seed"] == 5


def test_missing_or_empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["train", *DIGITS, "--steps", "1", "--out", str(tmp_path / "empty")]) == 0
    assert main(["train", *DIGITS, "--steps", "1", "--out", str(tmp_path / "new" / "deeper")]) == 0


# ------------------------------------------------------------------ 3. resume over damage
def _run(tmp_path, steps=4):
    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=steps, checkpoint_every=2))
    t.train()
    return t


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path, capsys):
    _run(tmp_path)
    _truncate(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")
    capsys.readouterr()
    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=6, checkpoint_every=2), resume=True)
    err = capsys.readouterr().err
    assert t.step == 2 and "step-00000004" in err and "model.safetensors" in err
    assert (tmp_path / "checkpoints" / "step-00000004.damaged").is_dir()
    t.train()
    assert ck.find_checkpoint(tmp_path).name == "step-00000006"
    ck.load_checkpoint(tmp_path / "checkpoints" / "step-00000004")  # step 4 written again, intact


def test_resume_names_a_broken_config_file(tmp_path, capsys):
    _run(tmp_path)
    cfg = tmp_path / "checkpoints" / "step-00000004" / "config.json"
    cfg.write_text('{"format_version": 1,\x01')
    capsys.readouterr()
    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=6), resume=True)
    assert t.step == 2 and str(cfg) in capsys.readouterr().err


def test_strict_resume_stops_and_names_the_file(tmp_path):
    _run(tmp_path)
    bad = tmp_path / "checkpoints" / "step-00000004" / "ema.safetensors"
    _truncate(bad)
    with pytest.raises(ck.CheckpointError, match="ema.safetensors") as e:
        Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=6), resume=True, strict_resume=True)
    assert "strict_resume" in e.value.hint
    assert (tmp_path / "checkpoints" / "step-00000004").is_dir()  # nothing renamed


def test_every_checkpoint_error_names_its_file(tmp_path):
    _run(tmp_path, steps=2)
    step = tmp_path / "checkpoints" / "step-00000002"
    (step / "config.json").write_text("{not json")
    (step / "manifest.json").unlink()  # as a checkpoint written before manifests
    with pytest.raises(ck.CheckpointError, match=str(step / "config.json")):
        dl.load_denoiser(tmp_path)


def test_checkpoint_without_manifest_is_intact_when_its_files_parse(tmp_path):
    _run(tmp_path, steps=2)
    step = tmp_path / "checkpoints" / "step-00000002"
    (step / "manifest.json").unlink()
    ck.verify_checkpoint(step)
    _truncate(step / "ema.safetensors")
    with pytest.raises(ck.CheckpointError, match="ema.safetensors is damaged"):
        ck.verify_checkpoint(step)


def test_a_kill_mid_prune_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, steps=4)
    real = shutil.rmtree

    def killed(path, *a, **k):  # dies after deleting one file
        files = [p for p in os.scandir(path)]
        for entry in files:
            sub = [q for q in os.scandir(entry.path)] if entry.is_dir() else []
            if sub:
                os.unlink(sub[0].path)
                raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", killed)
    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=6, checkpoint_every=2), resume=True)
    with pytest.raises(KeyboardInterrupt):
        t.train()  # writes step 6, then pruning step 2 is killed half-way
    monkeypatch.setattr(shutil, "rmtree", real)
    names = [p.name for p in ck.step_dirs(tmp_path / "checkpoints")]
    assert names == ["step-00000004", "step-00000006"]
    for p in ck.step_dirs(tmp_path / "checkpoints"):
        ck.verify_checkpoint(p)


def test_saving_an_existing_step_replaces_it(tmp_path):
    t = _run(tmp_path, steps=2)
    with torch.no_grad():
        next(t.model.parameters()).add_(1.0)
    t.checkpoint()
    got = ck.load_checkpoint(tmp_path)["model"]
    assert all(torch.equal(got[k], v.cpu()) for k, v in t.model.state_dict().items())


# ------------------------------------------------------------------ 4. one seed helper
def test_the_same_seed_draws_the_same_images_everywhere(tmp_path):
    assert main(["train", *DIGITS, "--steps", "1", "--out", str(tmp_path)]) == 0
    assert main(["sample", "--ckpt", str(tmp_path), "--n", "3", "--steps", "3", "--sampler", "ddpm", "--seed", "4",
                 "--precision", "fp32", "--out", str(tmp_path / "s.png"), "--npy", str(tmp_path / "s.npy")]) == 0
    cli = torch.from_numpy(np.load(tmp_path / "s.npy"))
    den = dl.load_denoiser(tmp_path)
    api = dl.sample(den, (3, 1, 8, 8), sampler="ddpm", steps=3, seed=4).clamp(-1, 1)
    many = sample_many(den, (1, 8, 8), 3, "ddpm", 3, seed=4, batch_size=2, progress=False).clamp(-1, 1)
    gens = dl.sample(den, (3, 1, 8, 8), sampler="ddpm", steps=3, generator=per_sample_generators(4, range(3)))
    assert torch.allclose(cli, api, atol=1e-5) and torch.allclose(cli, many, atol=1e-5)
    assert torch.allclose(api, gens.clamp(-1, 1))
    with pytest.raises(ValueError, match="seed or generator"):
        dl.sample(den, (1, 1, 8, 8), steps=2, seed=1, generator=torch.Generator())


class _Gauss:
    """Images N(0.3, 0.4^2 I): the exact denoiser, elementwise (so any batch split is exact)."""

    def __init__(self, **info):
        from diffusionlab.core.denoiser import DenoiserInfo

        self.info = DenoiserInfo(sigma_min=0.01, sigma_max=40.0, image_shape=(1, 4, 4), **info)

    def __call__(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return 0.3 + 0.16 / (0.16 + sigma ** 2) * (x - 0.3)


def test_sample_i_has_its_own_stream_whatever_the_batch_and_the_global_rng_is_untouched():
    """dl.sample(seed=), sample_many and the pipelines give image i the draws of
    per_sample_generators(seed, [i]): the same result at any batch size and split; and none of
    them reads or advances torch's global RNG."""
    from diffusionlab.core.cond import CondSpec
    from diffusionlab.pipelines.img2img import img2img
    from diffusionlab.pipelines.inpaint import inpaint, parse_mask
    from diffusionlab.pipelines.upscale import upscale

    den, sr = _Gauss(), _Gauss(cond=CondSpec(kind="image", image_channels=1, lowres=(2, 2)))
    shape, n, seed = (1, 4, 4), 5, 11
    x = torch.linspace(-0.9, 0.9, 16).reshape(1, *shape).repeat(n, 1, 1, 1)   # n copies of one image
    torch.manual_seed(123)                                        # whatever the global state is, nothing changes
    state = torch.get_rng_state()
    for sampler in ("ddpm", "euler_ancestral", "dpmpp_2m_sde"):
        whole = dl.sample(den, (n, *shape), sampler=sampler, steps=4, seed=seed)
        for i in range(n):
            one = dl.sample(den, (1, *shape), sampler=sampler, steps=4, generator=per_sample_generators(seed, [i]))
            torch.testing.assert_close(one[0], whole[i], atol=1e-6, rtol=0)
        for bs in (1, 2):
            part = sample_many(den, shape, n, sampler, 4, seed=seed, batch_size=bs, progress=False)
            torch.testing.assert_close(part, whole, atol=1e-6, rtol=0)
        assert (whole[0] - whole[1]).abs().max() > 1e-3                       # the streams differ per index
    mask = parse_mask("left", shape)
    for run in (lambda bs: img2img(den, x, 0.6, steps=5, sampler="euler_ancestral", seed=seed, batch_size=bs),
                lambda bs: inpaint(den, x, mask, steps=5, sampler="ddpm", seed=seed, jump_length=2, resample=2,
                                   batch_size=bs),
                lambda bs: upscale(sr, x[:, :, :2, :2], steps=3, sampler="euler_ancestral", seed=seed, batch_size=bs)):
        whole = run(n)
        for bs in (1, 2):
            torch.testing.assert_close(run(bs), whole, atol=1e-6, rtol=0)
        assert (whole[0] - whole[1]).abs().max() > 1e-3                       # same input, own streams
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="seed or generator"):
        dl.sample(den, (1, *shape), steps=2, seed=1, generator=torch.Generator())


# ------------------------------------------------------------------ 5. explicit, device-correct draws
def test_draws_land_on_the_requested_device_from_a_cpu_generator():
    from diffusionlab.core import rng

    g = torch.Generator().manual_seed(3)
    x = rng.randn((2, 3), g, device="meta")
    assert x.device.type == "meta"
    a = rng.randn((2, 3), torch.Generator().manual_seed(3))
    b = torch.randn((2, 3), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_p_losses_noise_comes_from_the_generator():
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x0 = torch.rand(2, 1, 4, 4)
    t = torch.tensor([3, 7])
    a = dl.p_losses(net, x0, t, generator=torch.Generator().manual_seed(0))
    b = dl.p_losses(net, x0, t, generator=torch.Generator().manual_seed(0))
    assert a == b


# ------------------------------------------------------------------ 7. --npy is one format
def test_npy_writer_clamps_to_float32_in_range(tmp_path):
    from diffusionlab.apps.cli import write_npy

    write_npy(tmp_path / "x.npy", torch.tensor([[[[3.0, -2.0], [0.5, 1.0]]]], dtype=torch.float64))
    arr = np.load(tmp_path / "x.npy")
    assert arr.dtype == np.float32 and arr.shape == (1, 1, 2, 2)
    assert arr.max() == 1.0 and arr.min() == -1.0 and arr[0, 0, 1, 0] == 0.5


# ------------------------------------------------------------------ the whole sequence
def test_the_core_bug_sequence_end_to_end(tmp_path, capsys):
    run = tmp_path / "lv"
    assert main(["train", *DIGITS, "--learned-variance", "--steps", "4", "--checkpoint-every", "2",
                 "--out", str(run)]) == 0
    outs = {}
    for thr in ("none", "clip"):
        npy = tmp_path / f"{thr}.npy"
        assert main(["sample", "--ckpt", str(run), "--n", "4", "--steps", "5", "--sampler", "ddpm",
                     "--threshold", thr, "--precision", "fp32", "--out", str(tmp_path / f"{thr}.png"),
                     "--npy", str(npy)]) == 0
        outs[thr] = np.load(npy)
        assert outs[thr].dtype == np.float32 and np.abs(outs[thr]).max() <= 1.0
    assert not np.allclose(outs["none"], outs["clip"])
    before = _snapshot(run)
    assert main(["train", *DIGITS, "--learned-variance", "--steps", "4", "--out", str(run)]) == 2
    assert _snapshot(run) == before
    _truncate(run / "checkpoints" / "step-00000004" / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "8", "--no-progress"]) == 0
    assert "skipped damaged checkpoint step-00000004" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["summary"]["steps"] == 8
