"""Train the models of the flow-vs-VP comparison (project venv), paired at the same training steps:

- text-to-image: the `make demo` recipe (``demo_text_config``) with ``--process flow`` for
  ``--steps`` optimizer steps (default 833: what the VP demo run reached in its 10-minute budget on
  the AVX2 machine, runs/demo); the VP side is runs/demo itself (or ``--train-vp-text``);
- unconditional MNIST: the unconditional demo recipe (``demo_config``, VP-v cosine) and the same
  recipe with ``process flow``, both for ``--steps`` steps.

Fixed step counts (no time budget) make the pair independent of the machine's load: the two
processes cost the same per step (the same network; the loss differs by a few elementwise ops).
Then compare with ``bench/trained_defaults.py nfe`` (README "Flow matching vs VP").

    .venv/bin/python bench/flow_vs_vp.py [--steps 833] [--only text,uncond]
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from diffusionlab.apps.demo import run_demo
from diffusionlab.models.processes import for_process
from diffusionlab.training import Trainer
from diffusionlab.training.config import demo_config, demo_text_config


def train_uncond(out: str, process: str, steps: int) -> None:
    cfg = demo_config(out_dir=out, time_budget=None, max_steps=steps, progress=False)
    if process != cfg.diffusion.process:
        cfg = dataclasses.replace(cfg, diffusion=for_process(cfg.diffusion, process))
    Trainer(config=cfg, overwrite=True).train()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=833)
    ap.add_argument("--only", default="text,uncond")
    ap.add_argument("--train-vp-text", action="store_true", help="also retrain the VP text demo (runs/vp_text)")
    a = ap.parse_args(argv)
    parts = a.only.split(",")
    if "text" in parts:
        flow = for_process(demo_text_config().diffusion, "flow")
        if not (Path("runs/flow_text/checkpoints/latest").is_file() and _steps("runs/flow_text") == a.steps):
            run_demo("runs/flow_text", None, 500, progress=False, max_steps=a.steps, diffusion=flow)
        if a.train_vp_text:
            run_demo("runs/vp_text", None, 500, progress=False, max_steps=a.steps)
    if "uncond" in parts:
        for process, out in (("ddpm", "runs/vp_uncond"), ("flow", "runs/flow_uncond")):
            if _steps(out) != a.steps:
                train_uncond(out, process, a.steps)
    return 0


def _steps(run: str) -> int | None:
    latest = Path(run) / "checkpoints" / "latest"
    return int(latest.read_text().strip().split("-")[-1]) if latest.is_file() else None


if __name__ == "__main__":
    raise SystemExit(main())
