"""Shared by the serve tests: tiny checkpoints trained once per session (a text model with a
guide snapshot, a class model), and a real server started as a subprocess on a free port."""
from __future__ import annotations

from pathlib import Path

from diffusionlab.apps.cli import main


def train_runs(root: Path) -> Path:
    """runs/text (small byte encoder, guidance 2, a guide snapshot) and runs/class under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, extra in (("text", ["--cond", "text", "--text-encoder", "small", "--guidance", "2", "--guide-at", "0.5"]),
                        ("class", ["--cond", "class", "--guidance", "2"])):
        if not (root / name / "checkpoints").is_dir():
            assert main(["train", "--preset", "tiny", *extra, "--out", str(root / name), "--no-progress"]) == 0
    return root


def server(runs: Path, *extra: str, timeout: float = 60.0):
    """A real ``diffusionlab serve --port 0`` subprocess (``apps.serve.loadtest.started``)."""
    from diffusionlab.apps.serve.loadtest import started

    return started(runs, *extra, timeout=timeout)
