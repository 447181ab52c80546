"""``diffusionlab demo``: the CLI side of ``apps.demo.run_demo`` (what `make demo` runs). The
defaults shown in the help are read from ``training.config.demo_text_config``."""
from __future__ import annotations

import json
from pathlib import Path

from ...core.samplers import SAMPLERS
from ...text.encoders import ENCODERS
from ...training.config import demo_text_config
from . import options

# flag dest -> the demo_text_config field it overrides
OVERRIDES = {"sampler": "sample_sampler", "steps": "sample_steps", "guidance": "guidance", "p_uncond": "p_uncond",
             "text_encoder": "text_encoder", "max_steps": "max_steps", "precision": "precision"}


def register(sub) -> None:
    cfg = demo_text_config()
    p = sub.add_parser("demo", help="text-to-image on MNIST-5k: train, sample, draw and measure (what `make demo` "
                                    "runs)")
    p.add_argument("--out", default=cfg.out_dir)
    p.add_argument("--time-budget", type=float, default=cfg.time_budget,
                   help=f"training seconds (default {cfg.time_budget:g})")
    p.add_argument("--max-steps", type=int, default=None,
                   help="train exactly this many steps instead of a time budget (e.g. a slower CPU's step count)")
    p.add_argument("--n-eval", type=int, default=500, help="samples per measured cell (500)")
    p.add_argument("--sampler", default=None, choices=list(SAMPLERS), metavar="NAME",
                   help=f"recorded sampling default (the demo's: {cfg.sample_sampler})")
    p.add_argument("--steps", type=int, default=None, help=f"recorded sampler steps (the demo's: {cfg.sample_steps})")
    p.add_argument("--guidance", type=float, default=None, help=f"recorded CFG scale (the demo's: {cfg.guidance:g})")
    p.add_argument("--p-uncond", type=float, default=None,
                   help=f"conditioning dropout (the demo's: {cfg.p_uncond:g})")
    p.add_argument("--text-encoder", choices=tuple(ENCODERS), default=None, help=f"the demo's: {cfg.text_encoder}")
    options.add_precision(p, default=None, help="training and sampling precision")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run, param_flags=options.param_flags(p, {v: "--" + k.replace("_", "-")
                                                                for k, v in OVERRIDES.items()}))


def run(a) -> int:
    from ..demo import run_demo

    over = {field: getattr(a, dest) for dest, field in OVERRIDES.items() if getattr(a, dest) is not None}
    budget = None if a.max_steps is not None else a.time_budget
    res = run_demo(a.out, budget, a.n_eval, progress=not a.no_progress, **over)
    print((Path(a.out) / "report.md").read_text())
    print(json.dumps(res["metrics"], indent=2))
    return 0
