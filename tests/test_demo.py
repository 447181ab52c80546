"""The `make demo` pipeline (text-to-image) end to end at toy size: every file, the report, and
that its numbers are what `diffusionlab sample --prompt` gives with the checkpoint's defaults."""
import json

import numpy as np
import torch

from diffusionlab.apps.cli import main
from diffusionlab.apps.demo import GUIDANCE_PICTURE, run_demo
from diffusionlab.training.config import DiffusionConfig, default_model

TINY = dict(model=default_model(dim=8, dim_mults=(1, 2), mid_attn=False, groups=4), diffusion=DiffusionConfig(timesteps=100),
            batch_size=8, max_steps=4, warmup_steps=2, n_val=16, val_every=2, log_every=1, sample_every=0,
            checkpoint_every=0, precision="fp32", sample_steps=3)


def test_the_text_to_image_demo_writes_every_file_and_its_report(tmp_path):
    out = tmp_path / "demo"
    res = run_demo(str(out), time_budget=None, n_eval=20, progress=False, **TINY)
    for f in ("prompts.png", "guidance.png", "negative.png", "samples.png", "denoising.gif", "noising.png", "loss.png",
              "metrics.jsonl", "run.json", "report.md", "eval.json"):
        assert (out / f).is_file(), f
    s = res["sampling"]
    assert (s["sampler"], s["steps"], s["guidance"]) == ("dpmpp_2m_sde", 3, 3.0)   # the checkpoint's recorded defaults
    assert res["metrics"]["n"] == 20 and res["metrics_empty"]["n"] == 20
    assert 0.0 <= res["metrics"]["requested_accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    assert "requested-digit accuracy" in report and "empty prompt (unconditional)" in report
    assert "held-out phrasings" in report and f"--ckpt {out} --prompt P" in report
    ev = json.loads((out / "eval.json").read_text())
    assert ev["metrics_empty"]["n"] == 20 and len(ev["pictures"]["prompts_png"]) == 80
    assert len(GUIDANCE_PICTURE) == 5 and GUIDANCE_PICTURE[-1] == 7.5
    cfg = json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())
    assert cfg["conditioning"]["kind"] == "text" and cfg["conditioning"]["encoder"] == "minilm"

    # the report's prompted sample 3 is what `sample --prompt` draws for seed 0, index 3 of the same prompt
    from diffusionlab.apps.demo import _batched_draw, _prompts
    from diffusionlab.models.loading import load_denoiser

    den = load_denoiser(out)
    prompts, _ = _prompts(4)
    x = _batched_draw(den, den.info.image_shape, 4, "dpmpp_2m_sde", 3, False, prompt=[prompts[3]] * 4)
    npy = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(out), "--prompt", prompts[3], "--n", "4", "--npy", str(npy),
                 "--out", str(tmp_path / "s.png"), "--precision", "fp32"]) == 0
    torch.testing.assert_close(torch.from_numpy(np.load(npy)), x.clamp(-1, 1), atol=1e-5, rtol=0)
