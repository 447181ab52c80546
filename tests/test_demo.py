"""The `make demo` pipeline end to end at toy size: every file, the report, autoguidance."""
import json

from diffusionlab.apps.demo import DEMO_AUTOGUIDANCE, run_demo
from diffusionlab.training.config import DiffusionConfig, default_model

TINY = dict(model=default_model(dim=8, dim_mults=(1, 2), mid_attn=False, groups=4), diffusion=DiffusionConfig(timesteps=100),
            batch_size=8, max_steps=4, warmup_steps=2, n_val=16, val_every=2, log_every=1, sample_every=0,
            checkpoint_every=0, precision="fp32", guide_at=0.5)


def test_demo_writes_every_file_and_reports_guided_and_unguided(tmp_path):
    out = tmp_path / "demo"
    res = run_demo(str(out), time_budget=None, n_eval=20, steps=4, progress=False, **TINY)
    for f in ("samples.png", "denoising.gif", "noising.png", "loss.png", "metrics.jsonl", "run.json",
              "report.md", "eval.json"):
        assert (out / f).is_file(), f
    assert res["sampling"]["autoguidance"] == DEMO_AUTOGUIDANCE and res["sampling"]["guide_step"] == 2  # guide_at 0.5 of 4 steps
    assert res["metrics"]["n"] == 20 and res["metrics_unguided"]["n"] == 20
    assert res["metrics"] != res["metrics_unguided"]
    report = (out / "report.md").read_text()
    assert f"autoguidance weight {DEMO_AUTOGUIDANCE:g}" in report and "| same model, unguided |" in report
    assert json.loads((out / "eval.json").read_text())["metrics_unguided"]["n"] == 20


def test_demo_without_autoguidance(tmp_path):
    res = run_demo(str(tmp_path / "d"), time_budget=None, n_eval=10, steps=3, progress=False, autoguidance=1.0,
                   **TINY)
    assert res["metrics_unguided"] is None and res["sampling"]["guide_step"] is None
    assert "autoguidance" not in (tmp_path / "d" / "report.md").read_text().split("## Quality")[0]
