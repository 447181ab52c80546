"""Shared by the serve tests: tiny checkpoints trained once per session (a text model with a
guide snapshot, a class model), and a real server started as a subprocess on a free port."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
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


@contextmanager
def server(runs: Path, *extra: str, timeout: float = 60.0):
    """``diffusionlab serve --runs RUNS --port 0 ...`` in a subprocess; yields (url, process).
    Stopped with SIGINT (and its exit code checked by the caller where it cares)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffusionlab", "serve", "--runs", str(runs), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url, lines, t0 = None, [], time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"ready at (http://\S+?/)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            proc.kill()
            raise RuntimeError("the server did not start:\n" + "".join(lines) + (proc.stdout.read() or ""))
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
