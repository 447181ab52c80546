"""Shared by the serve tests: tiny checkpoints trained once per session (a text model with a
guide snapshot, a class model, a LoRA adapter on the class model), and a real server started as
a subprocess on a free port."""
from __future__ import annotations

from pathlib import Path

from diffusionlab.apps.cli import main


def train_runs(root: Path) -> Path:
    """runs/text (small byte encoder, guidance 2, a guide snapshot), runs/class and
    runs/lora-three (a LoRA adapter on runs/class, two steps on threes) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, extra in (("text", ["--cond", "text", "--text-encoder", "small", "--guidance", "2", "--guide-at", "0.5"]),
                        ("class", ["--cond", "class", "--guidance", "2"])):
        if not (root / name / "checkpoints").is_dir():
            assert main(["train", "--preset", "tiny", *extra, "--out", str(root / name), "--no-progress"]) == 0
    if not (root / "lora-three" / "lora.json").is_file():
        train_adapter(root / "class", root / "lora-three")
    return root


def train_adapter(base: Path, out: Path, steps: int = 2) -> Path:
    """A LoRA adapter on ``base`` (a ``Trainer`` run) trained ``steps`` steps on threes."""
    from diffusionlab.training import Trainer
    from diffusionlab.training.finetune import finetune_config

    Trainer(config=finetune_config(str(base), digits=(3,), max_steps=steps, out_dir=str(out), batch_size=8,
                                   progress=False, checkpoint_every=steps, lr=3e-2, warmup_steps=1)).train()
    return out


def server(runs: Path, *extra: str, timeout: float = 60.0):
    """A real ``diffusionlab serve --port 0`` subprocess (``apps.serve.loadtest.started``)."""
    from diffusionlab.apps.serve.loadtest import started

    return started(runs, *extra, timeout=timeout)
