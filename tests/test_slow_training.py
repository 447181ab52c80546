"""Heavier checks (make test-slow): a short real training run on MNIST learns digit structure."""
import pytest
import torch

from diffusionlab.core.sampling import sample_many
from diffusionlab.evaluation import digit_metrics, load_digit_classifier
from diffusionlab.models.loading import load_denoiser
from diffusionlab.training import Trainer, demo_config


@pytest.mark.slow
def test_two_minutes_of_demo_training_beats_noise_by_far(tmp_path):
    cfg = demo_config(out_dir=str(tmp_path), time_budget=120.0, progress=False, sample_every=0)
    summary = Trainer(config=cfg).train()
    assert summary["steps"] > 100
    den = load_denoiser(tmp_path, autocast_dtype=torch.bfloat16)
    x = sample_many(den, (1, 32, 32), 200, "ddpm", 50, progress=False)
    m = digit_metrics(x, load_digit_classifier())
    noise = digit_metrics(torch.randn(200, 1, 32, 32).clamp(-1, 1), load_digit_classifier())
    assert m["fd"] < 0.5 * noise["fd"]
    assert m["class_entropy"] > 0.8
