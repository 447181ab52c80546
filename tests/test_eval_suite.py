"""The sample-quality suite: pluggable extractors, cached reference features, floors, and
evaluation during training (--eval-every)."""
import json

import numpy as np
import pytest
import torch

from diffusionlab.evaluation.suite import (FID_CAVEAT, ModuleExtractor, format_image_metrics, get_extractor,
                                           image_metrics, reference_features)


class MeanPool(torch.nn.Module):
    """A user-supplied feature network: 4x4 average-pooled pixels."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4)


def test_any_module_is_an_extractor_and_reference_features_are_cached(tmp_path):
    from diffusionlab.data import load_mnist

    ex = get_extractor(MeanPool(), name="meanpool")
    assert isinstance(ex, ModuleExtractor) and ex.name == "meanpool"
    ref = reference_features(ex, "mnist", "heldout", 28, 1, cache_dir=tmp_path)
    assert ref.shape == (1000, 16) and ref.dtype == np.float64
    files = list((tmp_path / "refstats").glob("*.npz"))
    assert len(files) == 1 and "mnist-heldout-28-meanpool" in files[0].name
    with np.load(files[0]) as z:
        assert z["sigma"].shape == (16, 16) and z["mu"].dtype == np.float64
    assert np.array_equal(reference_features(ex, "mnist", "heldout", 28, 1, cache_dir=tmp_path), ref)
    real = load_mnist("train", 28)[:300]
    noise = torch.rand(300, 1, 28, 28) * 2 - 1
    good = image_metrics(real, ex, ref, floor=load_mnist("train", 28)[300:600])
    bad = image_metrics(noise, ex, ref)
    assert good["fd"] < 0.2 * bad["fd"] and good["precision"] > bad["precision"]
    assert good["kid"] < bad["kid"] and good["coverage"] > bad["coverage"]
    assert good["fd"] < 3 * good["fd_floor"] and bad["fd"] > 20 * good["fd_floor"]  # real data scores near its floor
    text = format_image_metrics(good)
    assert "real-vs-real floor" in text and FID_CAVEAT in text


def test_unknown_extractor_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown extractor"):
        get_extractor("vgg")


def test_eval_every_logs_metrics_and_plots(tmp_path):
    from diffusionlab.training import Trainer
    from diffusionlab.training.config import tiny_config

    cfg = tiny_config(out_dir=str(tmp_path), max_steps=4, eval_every=2, eval_n=24, eval_steps=3,
                      eval_metrics="fd,pr", checkpoint_every=0)
    from test_trainer import FakeClock

    tr = Trainer(config=cfg, clock=FakeClock(0.25))
    tr.train()
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in recs if "eval_fd" in r]
    assert [r["step"] for r in ev] == [2, 4]
    assert "eval_fd_floor" in ev[0] and "eval_precision" in ev[1] and ev[0]["eval_extractor"] == "digits"
    assert (tmp_path / "eval.png").is_file()
    # evaluation time is not training time: the injected clock counts exactly the 4 steps
    assert tr.elapsed == 4 * 0.25


def test_evaluation_sampling_does_not_depend_on_batch_size():
    """The samples an evaluation scores come from per-sample seeds: the batch size of the
    sampling loop changes nothing (so metrics are comparable across machines and settings)."""
    from oracles import AnalyticNet, GaussianOracle

    from diffusionlab.core.sampling import sample_many
    from diffusionlab.core.denoiser import DiscreteDenoiser
    from diffusionlab.core.schedules import DiscreteSchedule

    sched = DiscreteSchedule.from_name("cosine", 50)
    oracle = GaussianOracle(torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64))
    den = DiscreteDenoiser(AnalyticNet(oracle, sched.sigmas, "v"), sched, "v")
    for sampler in ("ddpm", "dpmpp_2m_sde"):
        a = sample_many(den, (4,), 7, sampler, 10, seed=3, batch_size=7, progress=False)
        b = sample_many(den, (4,), 7, sampler, 10, seed=3, batch_size=3, progress=False)
        c = sample_many(den, (4,), 7, sampler, 10, seed=4, batch_size=7, progress=False)
        assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)
