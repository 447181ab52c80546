"""The page under load (``make test-e2e``): a bounded run of 200 small generations from 8
concurrent clients against a real server on the loopback address, and a queue overfilled on
purpose. Behaviour only (nothing dropped, no errors, memory bounded, 503 + Retry-After when
full); the latencies are measured and reported by bench/serve_load.py, never asserted."""
from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest

from diffusionlab.apps.serve import loadtest
from serve_helpers import server

pytestmark = pytest.mark.e2e
OUT = Path(os.environ.get("DL_E2E_OUT", Path(__file__).resolve().parents[1] / "runs" / "e2e"))


def test_200_generations_from_8_clients_finish_without_errors_in_bounded_memory(serve_runs):
    body = {"checkpoint": "class", "class": 3, "steps": 2, "batch": 1}
    with server(serve_runs, "--queue", "16") as (url, proc):
        assert loadtest.one(url, body).final == "done"                 # warm: the model is loaded
        before = loadtest.rss_mb(proc.pid)
        rep = loadtest.run(url, body, n=200, concurrency=8)
        after = loadtest.rss_mb(proc.pid)
        s = rep.summary()
        assert s["requests"] == 200 and s["done"] == 200, s
        assert s["errors"] == 0 and s["dropped"] == 0 and s["refused_503"] == 0
        assert all(o.steps == 2 for o in rep.ok)
        assert after - before < 300, (before, after)                   # finished jobs are forgotten
        health = json.load(urllib.request.urlopen(url + "api/health"))
        assert health["queued"] == 0 and health["running"] == 0
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps({**s, "rss_before_mb": before, "rss_after_mb": after}, indent=2))


def test_an_overfilled_queue_answers_503_with_retry_after_and_recovers(serve_runs):
    slow = {"checkpoint": "class", "steps": 60, "sampler": "euler", "batch": 16}
    with server(serve_runs, "--queue", "2") as (url, proc):
        outcomes, lock = [], threading.Lock()

        def go(i):
            o = loadtest.one(url, {**slow, "seed": i})
            with lock:
                outcomes.append(o)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        full = [o for o in outcomes if o.status == 503]
        assert full and all(o.retry_after and int(o.retry_after) >= 1 for o in full)
        assert "busy" in json.loads(full[0].error)["error"]
        assert all(o.final == "done" for o in outcomes if o.status == 202)
        assert loadtest.one(url, {"checkpoint": "class", "steps": 2}).final == "done"
