"""DiT vs U-Net, both class-conditional, on MNIST at the same time budget (issue 15).

    .venv/bin/python bench/dit_vs_unet.py --budget 300 --n 500

Each backbone is trained by `diffusionlab train --preset demo --cond class --arch A
--time-budget B --out runs/cmp_A` (the CLI's own entry point, one after the other on the same
machine; never two at once), then sampled with the checkpoint's sampler and steps, class i % 10
for sample i and the same per-sample seeds (paired), at guidance scales 1 and 3. Reports
parameters and forward FLOPs per image (torch.utils.flop_counter), training steps and img/s,
requested-class accuracy, confident fraction, FD / floor and sampling img/s. Writes
bench/RESULTS_dit_vs_unet.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=300.0)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--scales", default="1,3")
    p.add_argument("--out", default=str(HERE / "RESULTS_dit_vs_unet.md"))
    a = p.parse_args()

    import common

    import diffusionlab as dl
    from diffusionlab.apps.cli import main as cli_main
    from diffusionlab.core.cfg import classifier_free
    from diffusionlab.core.devices import cpu_info
    from diffusionlab.evaluation import digit_metrics, load_digit_classifier
    from diffusionlab.evaluation.digits import extract_features

    classifier = load_digit_classifier()
    labels = torch.arange(a.n) % 10
    rows = []
    for arch in ("unet", "dit"):
        run = Path(f"runs/cmp_{arch}")
        rc = cli_main(["train", "--preset", "demo", "--cond", "class", "--arch", arch,
                       "--time-budget", f"{a.budget:g}", "--out", str(run), "--overwrite", "--no-progress"])
        assert rc == 0, rc
        meta = json.loads((run / "run.json").read_text())
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ips = [r["img_per_s"] for r in logs if "img_per_s" in r]
        den = dl.load_denoiser(run, autocast_dtype=torch.bfloat16 if cpu_info()["fast_bf16"] else None)
        info = den.info
        net = den.net
        x1, t1 = torch.zeros(1, *info.image_shape), torch.zeros(1)
        _, flops = common.count_flops(lambda: net(x1, t1, dl.Cond(labels=torch.zeros(1, dtype=torch.long))))
        for s in (float(v) for v in a.scales.split(",")):
            t0 = time.perf_counter()
            x = dl.sample_many(classifier_free(den, s), info.image_shape, a.n, info.default_sampler or "ddim",
                               info.default_steps or 50, seed=0, cond=dl.Cond(labels=labels), progress=False)
            secs = time.perf_counter() - t0
            m = digit_metrics(x, classifier)
            _, probs = extract_features(classifier, x.clamp(-1, 1))
            acc = float((torch.from_numpy(probs).argmax(1) == labels).float().mean())
            rows.append(dict(arch=arch, params=meta["parameters"], gflops=flops / 1e9, steps=meta["summary"]["steps"],
                             train_ips=sum(ips[len(ips) // 4:]) / max(1, len(ips) - len(ips) // 4), scale=s,
                             acc=acc, conf=m["confident_fraction"], fd=m["fd"] / m["fd_floor"], sample_ips=a.n / secs,
                             sampler=f"{info.default_sampler} {info.default_steps}"))
            print(rows[-1], flush=True)
    lines = common.report_header("DiT vs U-Net, class-conditional MNIST, same budget (issue 15)",
                                 f"python bench/dit_vs_unet.py --budget {a.budget:g} --n {a.n}") + [
             f"- each: `diffusionlab train --preset demo --cond class --arch A --time-budget {a.budget:g}`; "
             f"{a.n} samples, class i % 10, seeds 0..{a.n - 1}, the checkpoint's sampler",
             "", "| arch | params | GFLOPs/img (fwd) | train steps | train img/s | sampler | scale | accuracy | confident | FD / floor | sample img/s |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['params'] / 1e6:.2f} M | {r['gflops']:.3f} | {r['steps']} | {r['train_ips']:.0f} | "
                     f"{r['sampler']} | {r['scale']:g} | {r['acc']:.3f} | {r['conf']:.3f} | {r['fd']:.2f}x | {r['sample_ips']:.1f} |")
    u, d = rows[0], rows[len(rows) // 2]
    lines += ["", f"DiT / U-Net: parameters {d['params'] / u['params']:.3f}x, FLOPs {d['gflops'] / u['gflops']:.3f}x, "
              f"training img/s {d['train_ips'] / u['train_ips']:.2f}x, sampling img/s {d['sample_ips'] / u['sample_ips']:.2f}x.", ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
