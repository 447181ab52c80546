"""A bounded load generator for a running page (``make test-e2e`` and ``bench/serve_load.py``):
a fixed number of generations from a fixed number of concurrent clients, each posting
``/api/generate`` and reading its event stream to the end; it stops by itself. Loopback only:
it refuses any other host, so it cannot be pointed at someone else's server.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlparse

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Outcome:
    """One request: its status, final event, seconds to the first step and to the end."""

    status: int
    final: str | None = None
    first_step: float | None = None
    seconds: float | None = None
    steps: int = 0
    error: str | None = None
    retry_after: str | None = None


@dataclass
class Report:
    outcomes: list = field(default_factory=list)
    wall: float = 0.0

    @property
    def ok(self) -> list:
        return [o for o in self.outcomes if o.status == 202 and o.final == "done"]

    def summary(self) -> dict:
        lat = sorted(o.seconds for o in self.ok)
        first = sorted(o.first_step for o in self.ok if o.first_step is not None)
        q = lambda v, p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))] if v else None  # noqa: E731
        return {"requests": len(self.outcomes), "done": len(self.ok),
                "errors": sum(o.status >= 500 and o.status != 503 or o.final == "error" for o in self.outcomes),
                "refused_503": sum(o.status == 503 for o in self.outcomes),
                "dropped": sum(o.status == 202 and o.final != "done" for o in self.outcomes),
                "p50_s": q(lat, 0.5), "p99_s": q(lat, 0.99), "mean_s": statistics.fmean(lat) if lat else None,
                "first_step_p50_s": q(first, 0.5), "throughput_per_s": len(self.ok) / self.wall if self.wall else None,
                "wall_s": self.wall}


def _check(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the load generator runs against the loopback address only, not {host!r}")
    return url.rstrip("/") + "/"


def one(url: str, body: dict, timeout: float = 300.0) -> Outcome:
    """POST one generation and read its event stream to the end."""
    url = _check(url)
    t0 = time.monotonic()
    req = urllib.request.Request(url + "api/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            head = json.load(r)
    except urllib.error.HTTPError as e:
        return Outcome(e.code, error=e.read().decode(errors="replace"), retry_after=e.headers.get("Retry-After"))
    except OSError as e:
        return Outcome(0, error=str(e))
    out = Outcome(202)
    name = None
    try:
        with urllib.request.urlopen(url + head["events"].lstrip("/"), timeout=timeout) as s:
            for raw in s:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                    if name == "step":
                        out.steps += 1
                        if out.first_step is None:
                            out.first_step = time.monotonic() - t0
                    if name in ("done", "error", "cancelled"):
                        out.final = name
                elif line.startswith("data: ") and name == "error":
                    out.error = line[6:]
    except OSError as e:
        out.error = str(e)
    out.seconds = time.monotonic() - t0
    return out


def run(url: str, body: dict, n: int = 200, concurrency: int = 8) -> Report:
    """``n`` generations of ``body`` from ``concurrency`` clients (seed i for request i)."""
    url = _check(url)
    rep, lock, next_i = Report(), threading.Lock(), iter(range(n))

    def client():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            o = one(url, {**body, "seed": i})
            with lock:
                rep.outcomes.append(o)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rep.wall = time.monotonic() - t0
    return rep


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux /proc), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def started(runs, *flags: str, timeout: float = 60.0, python: str | None = None):
    """``diffusionlab serve --runs RUNS --port 0 FLAGS`` in a subprocess on the loopback
    address; yields (url, process) once its readiness line names the URL; stopped with SIGINT."""
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([python or sys.executable, "-m", "diffusionlab", "serve", "--runs", str(runs), "--port", "0",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
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
        threading.Thread(target=proc.stdout.read, daemon=True).start()   # keep its pipe drained
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
