"""Run the metric-equivalence tests (pytest -m bench: our Inception features vs pytorch-fid's,
our FD / KID vs torchmetrics') and write their outcome to bench/RESULTS_metrics.md.

    .venv-bench/bin/python bench/metrics_check.py

Exits non-zero when a test fails, so `make bench` stops there. Skipped tests are listed with
pytest's reason (a reference package missing from the venv).
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = ["tests/test_inception.py", "tests/test_metrics.py"]


def main() -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "bench", "-rA", "-p", "no:cacheprovider", *TESTS]
    p = subprocess.run(cmd, cwd=os.path.dirname(HERE), capture_output=True, text=True)
    lines = p.stdout.splitlines()
    results = [ln for ln in lines if re.match(r"^(PASSED|FAILED|SKIPPED|ERROR) ", ln)]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|skipped)", ln)), "no summary")
    versions = {}
    for mod in ("torch", "torchmetrics", "pytorch_fid"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: reported as such
            versions[mod] = "not importable"
    out = ["# Metric equivalence with the reference implementations", "",
           f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
           f"- command: `{os.path.relpath(sys.executable)} bench/metrics_check.py` "
           f"(= `pytest -m bench {' '.join(TESTS)}`)",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
           "- what is checked: our FID Inception-v3 (written fresh, same weight layout) gives the same pool3 "
           "features as pytorch-fid's InceptionV3 with the same random weights (no weights can be downloaded "
           "here); our Frechet distance and KID equal torchmetrics' on the same features and subsets; "
           "tolerances are in each test",
           f"- outcome: **{summary.strip('= ')}**", "", "| outcome | test |", "|---|---|"]
    out += [f"| {r.split(' ', 1)[0]} | `{r.split(' ', 1)[1]}` |" for r in results]
    path = os.path.join(HERE, "RESULTS_metrics.md")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    return p.returncode


if __name__ == "__main__":
    raise SystemExit(main())
