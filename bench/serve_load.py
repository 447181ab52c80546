"""The live page measured (issue 24): time to the first streamed step and to the final image on
the demo's text model (and a class model) at the checkpoints' own defaults, a bounded load run
(200 small generations from 8 concurrent clients), an overfilled queue, and every bad request of
the API tests sent to the live server with the status it answered.

    .venv/bin/python bench/serve_load.py --runs runs --text demo --class class

Writes bench/RESULTS_serve.md (+ .json). A real ``diffusionlab serve`` subprocess on the
loopback address; the clients are threads of this process (apps.serve.loadtest).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from diffusionlab.apps.serve import loadtest  # noqa: E402
from diffusionlab.core.devices import cpu_info  # noqa: E402


def latency(url: str, body: dict, repeats: int) -> dict:
    runs = [loadtest.one(url, {**body, "seed": i}) for i in range(repeats)]
    bad = [o for o in runs if o.final != "done"]
    if bad:
        raise RuntimeError(f"a generation failed: {bad[0]}")
    return {"first_step_s": statistics.median(o.first_step for o in runs),
            "final_s": statistics.median(o.seconds for o in runs), "steps": runs[0].steps, "repeats": repeats}


def post(url: str, path: str, raw: bytes, method: str = "POST") -> tuple[int, str]:
    req = urllib.request.Request(url + path.lstrip("/"), data=raw if method == "POST" else None,
                                 headers={"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()[:200]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}").get("error", "")


def bad_requests(url: str, cid: str) -> list[dict]:
    """Every refused request of tests/test_serve_api.py, against the live server."""
    from test_serve_api import BAD, TRAVERSAL

    rows = []
    for route, body, _, _ in BAD:
        body = {**body, "checkpoint": cid} if isinstance(body, dict) and body.get("checkpoint") == "text" else body
        status, msg = post(url, route, json.dumps(body).encode())
        rows.append({"request": f"{route} {json.dumps(body)[:70]}", "status": status, "error": msg})
    for cid_bad in TRAVERSAL:
        status, msg = post(url, "/api/generate", json.dumps({"checkpoint": cid_bad}).encode())
        rows.append({"request": f"/api/generate checkpoint={cid_bad!r}", "status": status, "error": msg})
    for raw, what in ((b"{not json", "malformed JSON"), (b"\xff\xfe", "not UTF-8"),
                      (b'{"image": {"png": "' + b"A" * (3 * 1024 * 1024) + b'"}, "t": 1}', "a 3 MB upload")):
        status, msg = post(url, "/api/forward" if b"png" in raw else "/api/generate", raw)
        rows.append({"request": what, "status": status, "error": msg})
    return rows


def overfill(url: str, cid: str, body: dict) -> dict:
    out, lock = [], threading.Lock()

    def go(i):
        o = loadtest.one(url, {**body, "checkpoint": cid, "seed": i})
        with lock:
            out.append(o)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(out), "accepted": sum(o.status == 202 for o in out),
            "refused_503": sum(o.status == 503 for o in out),
            "retry_after": sorted({o.retry_after for o in out if o.status == 503}),
            "accepted_done": sum(o.final == "done" for o in out)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--text", default="demo", help="the text model's id under --runs")
    ap.add_argument("--class", dest="cls", default="class", help="a class model's id under --runs ('' to skip)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_serve.md"))
    a = ap.parse_args(argv)
    res = {"cpu": cpu_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}
    prompt = "a handwritten seven"
    with loadtest.started(a.runs, "--queue", "16") as (url, proc):
        ids = {c["id"]: c for c in json.load(urllib.request.urlopen(url + "api/checkpoints"))}
        loadtest.one(url, {"checkpoint": a.text, "prompt": prompt, "steps": 2})               # load the model once
        res["text_defaults"] = {**latency(url, {"checkpoint": a.text, "prompt": prompt, "batch": 1}, a.repeats),
                                "sampler": ids[a.text]["sampler"], "steps_default": ids[a.text]["steps"],
                                "guidance": ids[a.text]["guidance"], "batch": 1}
        res["text_defaults_b16"] = {**latency(url, {"checkpoint": a.text, "prompt": prompt, "batch": 16}, a.repeats),
                                    "batch": 16}
        if a.cls:
            loadtest.one(url, {"checkpoint": a.cls, "class": 7, "steps": 2})
            res["class_defaults"] = {**latency(url, {"checkpoint": a.cls, "class": 7, "batch": 1}, a.repeats),
                                     "sampler": ids[a.cls]["sampler"], "steps_default": ids[a.cls]["steps"],
                                     "guidance": ids[a.cls]["guidance"], "batch": 1}
        small = {"checkpoint": a.text, "prompt": prompt, "steps": 4, "batch": 1}
        before = loadtest.rss_mb(proc.pid)
        rep = loadtest.run(url, small, n=a.n, concurrency=a.concurrency)
        res["load"] = {**rep.summary(), "body": small, "concurrency": a.concurrency, "queue": 16,
                       "rss_before_mb": before, "rss_after_mb": loadtest.rss_mb(proc.pid)}
        res["bad_requests"] = bad_requests(url, a.text)
        res["still_serving"] = json.load(urllib.request.urlopen(url + "api/health"))["ok"]
    with loadtest.started(a.runs, "--queue", "2") as (url, proc):
        res["overfill"] = overfill(url, a.text, {"prompt": prompt, "steps": 40, "sampler": "euler", "batch": 16})
    Path(a.out).with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    Path(a.out).write_text(report(res, a))
    print(Path(a.out).read_text())


def report(r: dict, a) -> str:
    cpu = r["cpu"]
    t, t16, ld, of = r["text_defaults"], r["text_defaults_b16"], r["load"], r["overfill"]
    lines = [
        "# The live page: latency, load, refusals", "",
        f"date: {r['date']} · CPU: {cpu.get('model')} ({cpu.get('kind')}), 2 cores · command: "
        f"`.venv/bin/python bench/serve_load.py --runs {a.runs} --text {a.text} --class {a.cls}`", "",
        "A real `diffusionlab serve` on 127.0.0.1 (one worker, queue 16); times from the POST to the first `step` "
        "event and to the `done` event, as a client sees them (median of "
        f"{t['repeats']} seeds).", "",
        "| model | sampler, steps, guidance (checkpoint defaults) | batch | first streamed step | final image |",
        "|---|---|---:|---:|---:|",
        f"| text (`{a.text}`) | {t['sampler']}, {t['steps_default']}, {t['guidance']} | 1 | {t['first_step_s']:.3f} s "
        f"| {t['final_s']:.3f} s |",
        f"| text (`{a.text}`) | same | 16 | {t16['first_step_s']:.3f} s | {t16['final_s']:.3f} s |",
    ]
    if "class_defaults" in r:
        c = r["class_defaults"]
        lines.append(f"| class (`{a.cls}`) | {c['sampler']}, {c['steps_default']}, {c['guidance']} | 1 | "
                     f"{c['first_step_s']:.3f} s | {c['final_s']:.3f} s |")
    lines += ["", f"**Load**: {ld['requests']} generations ({json.dumps(ld['body'])}) from {ld['concurrency']} "
              f"concurrent clients: {ld['done']} done, {ld['errors']} errors, {ld['dropped']} dropped, "
              f"{ld['refused_503']} refused; latency p50 {ld['p50_s']:.3f} s, p99 {ld['p99_s']:.3f} s (queueing "
              f"included); throughput {ld['throughput_per_s']:.2f} generations/s; server RSS "
              f"{ld['rss_before_mb']:.0f} -> {ld['rss_after_mb']:.0f} MiB.", "",
              f"**Overfill** (queue 2, {of['requests']} concurrent 40-step batches of 16): {of['accepted']} accepted "
              f"(all {of['accepted_done']} done), {of['refused_503']} answered 503 with Retry-After "
              f"{', '.join(of['retry_after'])} s.", "",
              f"**Bad requests** ({sum(b['status'] >= 400 for b in r['bad_requests'])} refused; the server still served afterwards: "
              f"{r['still_serving']}):", "", "| request | status | message |", "|---|---:|---|"]
    for b in r["bad_requests"]:
        if b["status"] < 400:
            continue
        lines.append(f"| `{b['request'].replace('|', '/')}` | {b['status']} | {b['error'][:110].replace('|', '/')} |")
    valid = [b["request"] for b in r["bad_requests"] if b["status"] < 400]
    if valid:
        lines += ["", "Accepted here because the request is valid for these checkpoints (it is refused on the test "
                  "suite's tiny ones): " + "; ".join(f"`{v}`" for v in valid) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
