"""Quality at a fixed compute budget (issue 5, stage 3): diffusionlab, diffusers and
denoising-diffusion-pytorch each train a model of about the same size (4.1-4.6M parameters) on
MNIST-5k (4,000 digits, 32x32) for the same wall-clock training budget, with each library's
documented recipe, then sample 1,000 digits with its recommended fast sampler at 20 NFE.

    .venv-bench/bin/python bench/quality.py                       # 300 s per library (+ LR sweep)
    .venv-bench/bin/python bench/quality.py --budget 900          # the documented full run
    .venv-bench/bin/python bench/quality.py --budget 20 --no-sweep --n 200 --runs /tmp/q  # smoke

Learning rate: each library's documented default plus a small shared sweep (3e-4, 1e-3, 3e-3)
on runs of a third of the budget; the best by digit-feature FD (500 samples) is trained for the
full budget. The training clock counts optimizer steps only (evaluation during training,
sampling and data export are excluded). Every stage is cached in <runs>/results.json (rerun to
resume); each training runs in its own subprocess.

Recipes (documented defaults, adapted only where a 32x32 greyscale CPU run needs it):
- diffusionlab: its `make demo` configuration (v-prediction, cosine schedule, EMA, bf16 autocast
  where the CPU has it), sampled with SDE-DPM-Solver++(2M), 20 steps;
- diffusers: the train_unconditional example's loop (UNet2DModel with an attention level,
  DDPMScheduler linear 1000 steps, eps-prediction MSE, AdamW betas (0.95, 0.999) weight decay 1e-6,
  cosine schedule with 500 warm-up steps, EMAModel with warm-up power 3/4, grad clip 1), sampled
  with DPMSolverMultistepScheduler, 20 steps;
- denoising-diffusion-pytorch: Unet + GaussianDiffusion with their defaults (pred_v, sigmoid
  schedule, 1000 steps), its Trainer's optimizer (Adam betas (0.9, 0.99)), EMA (beta 0.995, every
  10 steps) and grad clip 1, written as a loop over the in-memory digits (the Trainer itself reads
  an image folder and has no time budget); no horizontal flips (digits); sampled with its DDIM,
  sampling_timesteps = 20.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

BATCH = 64
SWEEP = (3e-4, 1e-3, 3e-3)
DEFAULT_LR = {"ours": 3e-3, "diffusers": 1e-4, "ddpm": 1e-4}
LIBS = ("ours", "diffusers", "ddpm")
DIFFUSERS_UNET = dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(64, 128, 128),
                      layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
DDPM_UNET = dict(dim=56, dim_mults=(1, 2, 2), channels=1)


def digits():
    from diffusionlab.data import load_mnist
    return load_mnist("train", 32)                       # [-1, 1], [4000, 1, 32, 32]


# ------------------------------------------------------------------ one library's run (child)
class Clock:
    """Training seconds only; ``pause`` around evaluation."""

    def __init__(self):
        self.total, self._t0 = 0.0, None

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self):
        self.total += time.perf_counter() - self._t0


def _batches(x, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - BATCH + 1, BATCH):
            yield x[perm[i:i + BATCH]]


def run_ours(lr, budget, n, eval_every_s, out):
    from diffusionlab.core.sampling import sample_many
    from diffusionlab.models.loading import load_denoiser
    from diffusionlab.training import Trainer
    from diffusionlab.training.config import demo_config
    from diffusionlab.evaluation.viz import read_jsonl

    # --eval-every counts steps: convert the seconds with the demo model's measured ~2.3 steps/s
    every = max(20, int(eval_every_s * 2.3)) if eval_every_s else 0
    cfg = demo_config(lr=lr, time_budget=budget, out_dir=str(out), progress=False, sample_every=0,
                      checkpoint_every=0, val_every=0, eval_every=every, eval_n=250, eval_steps=20,
                      eval_metrics="fd", sample_sampler="dpmpp_2m_sde")
    tr = Trainer(config=cfg, overwrite=True)  # not cached: replace any partial run of this setting
    tr.train()
    curve = [(r["train_seconds"], r["eval_fd"]) for r in read_jsonl(out / "metrics.jsonl")
             if "eval_fd" in r and r["train_seconds"] < tr.elapsed - 1e-6]
    x = sample_many(load_denoiser(out), (1, 32, 32), n, "dpmpp_2m_sde", 20, progress=False)
    return x, tr.elapsed, tr.step, curve


def run_diffusers(lr, budget, n, eval_every_s, out):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = UNet2DModel(**DIFFUSERS_UNET)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    data, clock, step, curve, planned, lr_s = _batches(digits()), Clock(), 0, [], None, None
    next_eval = eval_every_s

    def sample(count):
        shadow = UNet2DModel(**DIFFUSERS_UNET)
        ema.copy_to(shadow.parameters())
        shadow.eval()
        s = DPMSolverMultistepScheduler.from_config(sched.config)
        g = torch.Generator().manual_seed(1)
        outs = []
        with torch.no_grad():
            for i in range(0, count, 250):
                s.set_timesteps(20)  # resets the multistep state for every batch
                x = torch.randn(min(250, count - i), 1, 32, 32, generator=g)
                for t in s.timesteps:
                    x = s.step(shadow(x, t).sample, t, x).prev_sample
                outs.append(x.clamp(-1, 1))
        return torch.cat(outs)

    while clock.total < budget:
        clock.start()
        x0 = next(data)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (BATCH,))
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if lr_s is not None:
            lr_s.step()
        opt.zero_grad()
        ema.step(model.parameters())
        step += 1
        clock.stop()
        if step == 20:  # the cosine schedule needs a length: estimate it from the measured speed
            planned = int(budget / (clock.total / step))
            lr_s = get_scheduler("cosine", opt, num_warmup_steps=min(500, planned // 10), num_training_steps=planned)
            for _ in range(step):
                lr_s.step()
        if eval_every_s and clock.total >= next_eval and clock.total < budget:
            curve.append((clock.total, _fd(sample(250))))
            next_eval += eval_every_s
    return sample(n), clock.total, step, curve


def run_ddpm(lr, budget, n, eval_every_s, out):
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    torch.manual_seed(0)
    diffusion = GaussianDiffusion(Unet(**DDPM_UNET), image_size=32, timesteps=1000, sampling_timesteps=20)
    opt = torch.optim.Adam(diffusion.parameters(), lr=lr, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    data, clock, step, curve = _batches((digits() + 1) / 2), Clock(), 0, []   # this library takes [0, 1]
    next_eval = eval_every_s

    def sample(count):
        ema.ema_model.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            return torch.cat([ema.ema_model.sample(batch_size=min(250, count - i)) * 2 - 1
                              for i in range(0, count, 250)])

    while clock.total < budget:
        clock.start()
        loss = diffusion(next(data))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()
        step += 1
        clock.stop()
        if eval_every_s and clock.total >= next_eval and clock.total < budget:
            curve.append((clock.total, _fd(sample(250))))
            next_eval += eval_every_s
    return sample(n), clock.total, step, curve


RUNNERS = {"ours": run_ours, "diffusers": run_diffusers, "ddpm": run_ddpm}


def param_count(lib: str) -> int:
    """Trainable parameters of the network each library trains here (built fresh; cheap)."""
    if lib == "ours":
        from diffusionlab.training.config import demo_config
        from diffusionlab.training.trainer import build_diffusion
        net = build_diffusion(demo_config()).model
    elif lib == "diffusers":
        from diffusers import UNet2DModel
        net = UNet2DModel(**DIFFUSERS_UNET)
    else:
        from denoising_diffusion_pytorch import Unet
        net = Unet(**DDPM_UNET)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _fd(x) -> float:
    from diffusionlab.evaluation import digit_metrics
    return digit_metrics(x)["fd"]


def score(x) -> dict:
    """The digit-classifier metrics and, on the same features, precision / recall and KID."""
    from diffusionlab.evaluation import digit_metrics
    from diffusionlab.evaluation.suite import get_extractor, image_metrics, reference_features

    m = digit_metrics(x)
    ex = get_extractor("digits")
    pr = image_metrics(x, ex, reference_features(ex, "mnist", "heldout", 32, 1), metrics=("pr", "kid"),
                       kid_subset_size=min(1000, len(x)))
    return {"n": len(x), **{k: m[k] for k in ("fd", "fd_floor", "fd_ratio", "confident_fraction", "class_entropy",
                                              "floor_confident_fraction")},
            **{k: pr[k] for k in ("precision", "recall", "kid")}}


def child(a) -> None:
    torch.set_num_threads(a.threads)
    out = Path(a.runs) / f"{a.one}-lr{a.lr:g}-b{a.budget:g}"
    x, secs, steps, curve = RUNNERS[a.one](a.lr, a.budget, a.n, a.eval_every, out)
    res = {"lib": a.one, "lr": a.lr, "budget": a.budget, "train_seconds": secs, "steps": steps,
           "params": param_count(a.one), "curve": curve, **score(x),
           "made": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------ orchestration (parent)
def run_child(a, lib, lr, budget, n, eval_every) -> dict:
    cmd = [sys.executable, __file__, "--one", lib, "--lr", str(lr), "--budget", str(budget), "--n", str(n),
           "--eval-every", str(eval_every), "--runs", a.runs, "--threads", str(a.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"lib": lib, "lr": lr, "error": (p.stderr or p.stdout)[-2000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per library (full run: 900)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--no-sweep", action="store_true", help="each library's documented learning rate only")
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--runs", default="runs/bench_quality")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=float, default=None, help="seconds between FD points (default budget/5)")
    ap.add_argument("--out", default="bench/RESULTS_quality.md")
    ap.add_argument("--fresh", action="store_true", help="ignore the cached results of earlier runs")
    ap.add_argument("--one", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.eval_every is None:
        a.eval_every = a.budget / 5
    if a.one:
        child(a)
        return 0
    Path(a.runs).mkdir(parents=True, exist_ok=True)
    rpath = Path(a.runs) / "results.json"
    res = json.loads(rpath.read_text()) if rpath.exists() and not a.fresh else {}

    def cached(key, fn):
        if key not in res or "error" in res[key]:
            print(f"[{datetime.datetime.now():%H:%M:%S}] {key}", flush=True)
            res[key] = {**fn(), "made": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            tmp = rpath.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            tmp.replace(rpath)
        return res[key]

    libs = [lib for lib in a.libs.split(",") if lib]
    best_lr = {}
    for lib in libs:
        lrs = [DEFAULT_LR[lib]] if a.no_sweep else sorted({DEFAULT_LR[lib], *SWEEP})
        if len(lrs) == 1:
            best_lr[lib] = lrs[0]
            continue
        sweep = {lr: cached(f"sweep|{lib}|{lr:g}|{a.budget / 3:g}",
                            lambda lib=lib, lr=lr: run_child(a, lib, lr, a.budget / 3, 500, 0)) for lr in lrs}
        ok = {lr: r for lr, r in sweep.items() if "fd" in r}
        best_lr[lib] = min(ok, key=lambda lr: ok[lr]["fd"]) if ok else DEFAULT_LR[lib]
    for r in res.values():  # older cache entries lack the count
        if r.get("params") is None and r.get("lib") in RUNNERS:
            r["params"] = param_count(r["lib"])
    final = {lib: cached(f"final|{lib}|{best_lr[lib]:g}|{a.budget:g}|{a.n}",
                         lambda lib=lib: run_child(a, lib, best_lr[lib], a.budget, a.n, a.eval_every)) for lib in libs}
    cached(f"floor|{a.n}", lambda: real_floor(a.n))
    Path(a.out).write_text(report(a, final, res))
    plot_curves(final, Path(a.out).with_suffix(".png"))
    print(Path(a.out).read_text())
    return 0


def real_floor(n: int) -> dict:
    """Every metric for n real training digits (random subset, seed 0) against the held-out
    reference: what a perfect generator scores with the same n."""
    x = digits()
    return score(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]])


TITLES = {"ours": "diffusionlab", "diffusers": "diffusers", "ddpm": "denoising-diffusion-pytorch"}


def made(final: dict) -> str:
    when = sorted(r["made"][:16].replace("T", " ") for r in final.values() if "made" in r)
    unknown = sum("made" not in r for r in final.values())
    span = (when[0] if when[0] == when[-1] else f"{when[0]} to {when[-1]}") if when else ""
    return span + (f"{' and ' if span else ''}{unknown} in an earlier run" if unknown else "")


def report(a, final, res) -> str:
    cmd = "python bench/quality.py " + " ".join(sys.argv[1:])
    fl = res.get(f"floor|{a.n}") or {}
    L = ["# Quality at a fixed training budget (MNIST-5k, 32x32, 2 CPU cores)", "",
         f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
         f"- command: `{cmd}` (stages cached in {a.runs}/results.json)",
         f"- budget: {a.budget:g} s of training per library (optimizer steps only; evaluation during training, "
         f"sampling and data loading set-up excluded), batch {BATCH}, {a.threads} threads, fp32 for the peers "
         "(their documented default), ours as `make demo` trains (bf16 autocast where the CPU has it)",
         f"- {a.n} samples per library at 20 NFE: ours SDE-DPM-Solver++(2M), diffusers DPMSolverMultistep, "
         "denoising-diffusion-pytorch its DDIM (sampling_timesteps = 20)",
         "- FD: Frechet distance of the project's digit-classifier features to the 1,000 held-out digits; KID "
         "(unbiased, 100 subsets) on the same features; precision / recall k = 3; confident = classifier p > 0.9",
         "- floor: the same metrics for real training digits (same n) against the held-out digits",
         "- Numbers from 1,000 samples are not comparable with the literature's 50,000-sample FIDs.",
         f"- the trainings behind this table were made {made(final)} (cached results are reused until "
         "`--fresh`)", "",
         "| library | params | lr | steps | train s | FD | KID | precision | recall | confident | "
         "class entropy | FD / ours |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ours = final.get("ours", {}).get("fd")
    for lib, r in final.items():
        if "fd" not in r:
            L.append(f"| {TITLES[lib]} | - | {r.get('lr')} | failed: {r.get('error', '')[-200:]!r} |")
            continue
        ratio = f"**{r['fd'] / ours:.2f}**" if ours else "-"
        L.append(f"| {TITLES[lib]} | {r['params'] / 1e6:.2f}M | {r['lr']:g} | {r['steps']} | "
                 f"{r['train_seconds']:.0f} | {r['fd']:.2f} | {r['kid']:.3f} | {r['precision']:.3f} | "
                 f"{r['recall']:.3f} | {r['confident_fraction']:.3f} | {r['class_entropy']:.3f} | {ratio} |")
    if fl:
        L.append(f"| real-vs-real floor | | | | | {fl['fd']:.2f} | {fl['kid']:.3f} | {fl['precision']:.3f} | "
                 f"{fl['recall']:.3f} | {fl['confident_fraction']:.3f} | {fl['class_entropy']:.3f} | |")
    peers = [r["fd"] for lib, r in final.items() if lib != "ours" and "fd" in r]
    if ours and peers:
        gain = 1 - ours / min(peers)
        L += ["", f"Target (issue 5): ours best on FD by >= 20% at equal budget. The best peer's FD is "
                  f"{min(peers) / ours:.2f}x ours ({min(peers):.2f} vs {ours:.2f}; ours {gain:.0%} lower): "
                  + ("met." if gain >= 0.2 else "not met.")]
    sweeps = sorted((k for k in res if k.startswith("sweep|")), key=lambda k: (k.split("|")[1], float(k.split("|")[2])))
    if sweeps:
        L += ["", f"Learning-rate sweep ({a.budget / 3:g} s of training, 500 samples, FD; the best is trained for "
                  "the full budget):", "", "| library | lr | steps | FD (500 samples) |", "|---|---|---|---|"]
        for k in sweeps:
            r = res[k]
            if k.split("|")[3] != f"{a.budget / 3:g}":
                continue
            fd = f"{r['fd']:.2f}" if "fd" in r else "failed"
            L.append(f"| {TITLES.get(r.get('lib'), r.get('lib'))} | {r.get('lr'):g} | {r.get('steps', '-')} | {fd} |")
    chosen = {id(r) for r in final.values()}
    others = [r for k, r in res.items() if k.startswith("final|") and id(r) not in chosen and "fd" in r
              and k.split("|")[3] == f"{a.budget:g}" and k.split("|")[4] == str(a.n)]
    if others:
        L += ["", "Other full-budget runs in the cache (other learning rates, e.g. a `--no-sweep` run at the documented "
                  "defaults; same protocol):", "", "| library | lr | steps | FD | confident | made |", "|---|---|---|---|---|---|"]
        L += [f"| {TITLES[r['lib']]} | {r['lr']:g} | {r['steps']} | {r['fd']:.2f} | {r['confident_fraction']:.3f} | "
              f"{r.get('made', 'earlier run')[:16]} |" for r in others]
    L += ["", f"![FD against training time]({Path(a.out).with_suffix('.png').name})"]
    return "\n".join(L) + "\n"


def plot_curves(final, path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(7, 4.5), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for lib, r in final.items():
        pts = [tuple(p) for p in r.get("curve", [])] + ([(r["train_seconds"], r["fd"])] if "fd" in r else [])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lib)
    floors = [r["fd_floor"] for r in final.values() if "fd_floor" in r]
    if floors:
        ax.axhline(min(floors), color="gray", linestyle="--", label="real-vs-real floor")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("digit-feature FD (lower is better)")
    ax.set_yscale("log")
    ax.set_title("Sample quality vs training time (20-NFE samplers)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
