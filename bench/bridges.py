"""Issue 31's bridges measured: network forward speed (images per second) on this CPU, project
venv, nothing else running.

- ``onnx``: the default U-Net (the CLI's default network: dim 64, levels 1,2,2, 2x2 patches,
  class-conditional, 32x32 greyscale) in PyTorch eager fp32 against its ONNX export in
  onnxruntime (CPUExecutionProvider, the same threads), batch 1 and 64; the largest difference
  between the two is recorded beside the speed.
- ``layout``: the same U-Net without patches, native layout against ``--layout diffusers``
  (a diffusers ``UNet2DModel`` of the same widths, blocks and attention): our network against
  the peer's blocks on the same hardware, same parameters count within a few percent.

Each configuration is timed ``--repeats`` rounds of at least 1 s after a warm-up (the two layouts
alternated round by round); the median is reported. Writes bench/RESULTS_bridges.md and .json.

    .venv/bin/python bench/bridges.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "RESULTS_bridges"


def _time(fn, repeats: int, min_seconds: float = 1.0) -> float:
    """Median seconds per call over ``repeats`` rounds of at least ``min_seconds`` each."""
    fn()
    out = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 >= min_seconds:
                break
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def _inputs(net, batch: int, g):
    from diffusionlab.models.export import onnx_inputs

    return onnx_inputs(net.cond_spec, (1, 32, 32), batch, g)


def bench_onnx(repeats: int) -> list:
    import onnxruntime as ort

    from diffusionlab.models.export import _OnnxNetwork, _names, write_onnx
    from diffusionlab.nn import build_network
    from diffusionlab.training.config import default_model

    torch.manual_seed(0)
    net = build_network("unet", default_model(num_classes=10)).eval()
    torch.nn.init.normal_(net.final_conv.weight, std=0.05)  # a fresh network outputs zeros: give the diff meaning
    names = _names(net.cond_spec)
    wrapped = _OnnxNetwork(net, names).eval()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "unet.onnx"
        write_onnx(net, net.cond_spec, (1, 32, 32), path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for batch in (1, 64):
            x = _inputs(net, batch, torch.Generator().manual_seed(batch))
            args = [x[n] for n in ("x_in", "c_noise", *names)]
            feed = {n: x[n].numpy() for n in ("x_in", "c_noise", *names)}
            with torch.no_grad():
                ref = wrapped(*args)
                t_torch = _time(lambda: wrapped(*args), repeats)
            got = torch.from_numpy(session.run(["out"], feed)[0])
            t_ort = _time(lambda: session.run(["out"], feed), repeats)
            rows.append({"bench": "onnx", "batch": batch, "torch_img_s": batch / t_torch, "ort_img_s": batch / t_ort,
                         "ratio_ort_over_torch": t_torch / t_ort, "max_abs_diff": float((got - ref).abs().max()),
                         "parameters": sum(p.numel() for p in net.parameters())})
            print(rows[-1], flush=True)
    return rows


def bench_layout(repeats: int) -> list:
    from diffusionlab.core.cond import Cond
    from diffusionlab.nn import build_network
    from diffusionlab.training.config import default_model

    rows = []
    nets = {}
    for layout in ("native", "diffusers"):
        torch.manual_seed(0)
        nets[layout] = build_network("unet", default_model(num_classes=10, patch_size=1, layout=layout)).eval()
    for batch in (1, 64):
        g = torch.Generator().manual_seed(batch)
        x, t = torch.randn(batch, 1, 32, 32, generator=g), torch.rand(batch, generator=g) * 999
        cond = Cond(labels=torch.randint(0, 10, (batch,), generator=g))
        rounds = {layout: [] for layout in nets}
        with torch.no_grad():
            for _ in range(repeats):  # alternated round by round, so drift in the machine's speed hits both
                for layout, net in nets.items():
                    rounds[layout].append(_time(lambda: net(x, t, cond), 1))
        times = {layout: statistics.median(r) for layout, r in rounds.items()}
        rows.append({"bench": "layout", "batch": batch, "native_img_s": batch / times["native"],
                     "diffusers_img_s": batch / times["diffusers"],
                     "ratio_native_over_diffusers": times["diffusers"] / times["native"],
                     "native_parameters": sum(p.numel() for p in nets["native"].parameters()),
                     "diffusers_parameters": sum(p.numel() for p in nets["diffusers"].parameters())})
        print(rows[-1], flush=True)
    return rows


def write(rows: list, repeats: int) -> None:
    import diffusers
    import onnxruntime

    from diffusionlab.core.devices import cpu_info

    cpu = cpu_info()
    meta = {"cpu": f"{cpu['model']}, {cpu['kind']}", "threads": torch.get_num_threads(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "diffusers": diffusers.__version__, "repeats": repeats,
            "date": time.strftime("%Y-%m-%d"), "command": "bench/bridges.py " + " ".join(sys.argv[1:])}
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Bridges: ONNX Runtime and the diffusers layout, forward speed (issue 31)", "",
             f"`.venv/bin/python {meta['command'].strip()}` on {meta['cpu']}, {meta['threads']} threads, fp32, "
             f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, diffusers {meta['diffusers']}, "
             f"{meta['date']}; median of {repeats} rounds of >= 1 s each.", "",
             "## The default U-Net (class-conditional, 32x32, 2x2 patches): PyTorch eager vs its ONNX export", "",
             "| batch | PyTorch img/s | onnxruntime img/s | onnxruntime / PyTorch | max abs diff |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["bench"] == "onnx":
            lines.append(f"| {r['batch']} | {r['torch_img_s']:.1f} | {r['ort_img_s']:.1f} | "
                         f"{r['ratio_ort_over_torch']:.2f}x | {r['max_abs_diff']:.1e} |")
    lines += ["", "## The same U-Net without patches: native layout vs `--layout diffusers` (a diffusers UNet2DModel)", "",
              "| batch | native img/s | diffusers layout img/s | native / diffusers | parameters (native / diffusers) |",
              "|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["bench"] == "layout":
            lines.append(f"| {r['batch']} | {r['native_img_s']:.1f} | {r['diffusers_img_s']:.1f} | "
                         f"{r['ratio_native_over_diffusers']:.2f}x | {r['native_parameters']:,} / "
                         f"{r['diffusers_parameters']:,} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    write(bench_onnx(a.repeats) + bench_layout(a.repeats), a.repeats)


if __name__ == "__main__":
    main()
