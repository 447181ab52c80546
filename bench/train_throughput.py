"""Training throughput of diffusionlab's U-Net against two peer libraries, in one run.

One training step = forward + MSE loss + backward + AdamW step on a random batch of 64
1x32x32 images (random timesteps, random target). Every (model, precision, memory format)
is measured in a fresh subprocess of this script (``--one NAME``) so that peak RSS, thread
pools and allocator state are its own; the parent collects one JSON line from each and
writes a markdown table plus speed ratios.

Models: ours (the demo config, and one config matched to each peer within +-15% on both
parameter count and forward FLOPs - see MATCHED and ``--search``), diffusers' UNet2DModel
and denoising-diffusion-pytorch's Unet. Peers that are not installed are reported as such.

    python bench/train_throughput.py [--quick] [--steps N] [--out FILE] [--only ours,diffusers,ddpm]
    python bench/train_throughput.py --search      # re-derive the matched configs
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import common

BATCH = 64
IMAGE = (1, 32, 32)  # channels, height, width
PRECISIONS = ("fp32", "bf16")
LIBRARIES = ("ours", "diffusers", "ddpm")
DEFAULT_OUT = "bench/RESULTS_throughput.md"
CHILD_TIMEOUT_S = 1800  # per measurement subprocess: a hung one is reported, not waited on forever


# ---------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Spec:
    """One network to measure. `kwargs` go to the library's constructor; `formats` are the
    memory formats tried (ours trains in channels_last only, as its Trainer does on CPU)."""
    name: str
    library: str                                  # one of LIBRARIES (the --only filter)
    kwargs: dict = field(hash=False)
    formats: tuple[str, ...] = ("channels_last", "contiguous")

    @property
    def config(self) -> str:
        """The constructor arguments, compactly (those every model gets left out)."""
        return ", ".join(f"{k}={_compact(v)}" for k, v in self.kwargs.items() if k not in _IMPLIED)


_IMPLIED = {"channels", "in_channels", "out_channels", "sample_size"}


def _compact(value) -> str:
    """(64, 128) -> (64,128); ('DownBlock2D', 'AttnDownBlock2D') -> (Down,AttnDown)."""
    if isinstance(value, tuple):
        return "(" + ",".join(_compact(v) for v in value) + ")"
    return value.removesuffix("Block2D") if isinstance(value, str) else str(value)



@dataclass(frozen=True)
class Library:
    module: str                                   # import name (its absence = "not installed")
    title: str                                    # name in the table
    build: Callable[[dict], torch.nn.Module]      # constructor kwargs -> model (imports lazily)
    forward: Callable                             # (model, x, t) -> prediction; t: float in [0, 1000)


def _build_ours(kw):
    from diffusionlab import Unet
    return Unet(**kw)


def _build_diffusers(kw):
    from diffusers import UNet2DModel
    return UNet2DModel(**kw)


def _build_ddpm(kw):
    from denoising_diffusion_pytorch import Unet
    return Unet(**kw)


# the peers get integer timesteps, as their own training loops pass them
LIBRARY = {
    "ours": Library("diffusionlab", "diffusionlab", _build_ours, lambda m, x, t: m(x, t)),
    "diffusers": Library("diffusers", "diffusers", _build_diffusers, lambda m, x, t: m(x, t.long()).sample),
    "ddpm": Library("denoising_diffusion_pytorch", "denoising-diffusion-pytorch", _build_ddpm,
                    lambda m, x, t: m(x, t.long())),
}

PEERS = {
    "diffusers": dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(64, 128, 128),
                      layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "ddpm": dict(dim=64, dim_mults=(1, 2, 2), channels=1),
}

OURS_DEMO = dict(dim=64, dim_mults=(1, 2, 2), channels=1, num_res_blocks=1, linear_attn=False, patch_size=2)

# Our config matched to each peer: resnet blocks and 3 levels like the peers, both parameters
# and forward FLOPs within +-15% (``--search`` lists the candidates). For diffusers it is the
# closest one. For ddpm-pytorch the closest (dim 48, 3 blocks per level: 5.09 M, 2.30 GFLOPs)
# trains slower than dim 64 with one block per level (4.78 M, -9%; 2.19 GFLOPs, -8%), because
# 48 channels fill AVX-512 bf16 vectors badly; we use the latter and report the FLOP-normalised
# ratio beside the raw one, so the 8% fewer FLOPs are not counted as speed.
MATCHED = {
    "diffusers": dict(dim=64, dim_mults=(1, 2, 2), channels=1, num_res_blocks=2, linear_attn=True),
    "ddpm": dict(dim=64, dim_mults=(1, 2, 2), channels=1, num_res_blocks=1, linear_attn=True),
}
MATCH_TOLERANCE = 0.15

SPECS = [Spec("ours-demo", "ours", OURS_DEMO, ("channels_last",))]
SPECS += [Spec(f"ours-match-{peer}", "ours", kw, ("channels_last",)) for peer, kw in MATCHED.items()]
SPECS += [Spec(peer, peer, kw) for peer, kw in PEERS.items()]
SPEC_BY_NAME = {s.name: s for s in SPECS}


def installed(library: str) -> bool:
    return importlib.util.find_spec(LIBRARY[library].module) is not None


# ---------------------------------------------------------------------------------- child side
@dataclass
class Timing:
    """How long to measure: warm-up steps, then `windows` timed windows of `window` steps."""
    warmup: int
    windows: int
    window: int
    sample_reps: int
    peak_n: int
    peak_reps: int

    @classmethod
    def from_args(cls, args) -> "Timing":
        if args.quick:
            return cls(warmup=1, windows=max(1, args.steps or 2), window=1, sample_reps=2, peak_n=1024,
                       peak_reps=2)
        steps = args.steps or 10
        window = 2 if steps >= 6 else 1
        return cls(warmup=3, windows=max(1, steps // window), window=window, sample_reps=5, peak_n=4096,
                   peak_reps=4)


def measure_peak(timing: Timing) -> dict:
    """Matmul peak (GFLOP/s) per precision with this process's threads."""
    return {"peak_gflops": {"fp32": common.matmul_peak_gflops(torch.float32, timing.peak_n, timing.peak_reps),
                            "bf16": common.matmul_peak_gflops(torch.bfloat16, timing.peak_n, timing.peak_reps)}}


def make_batch(fmt: str, batch: int):
    """Random images, timesteps in [0, 1000) and regression targets."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *IMAGE, generator=g)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.rand(batch, generator=g) * 1000
    return x, t, torch.randn(x.shape, generator=g)


def measure(spec: Spec, precision: str, fmt: str, timing: Timing, batch: int) -> dict:
    """Throughput, FLOPs, sampling speed and peak RSS of one (model, precision, format)."""
    torch.manual_seed(0)
    model = LIBRARY[spec.library].build(spec.kwargs).train()
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, target = make_batch(fmt, batch)

    def predict():
        with common.precision_context(precision):
            return LIBRARY[spec.library].forward(model, x, t)

    def loss_fn():
        return F.mse_loss(predict().float(), target)

    def step():
        loss_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fwd_flops, bwd_flops = count_train_flops(loss_fn, opt)  # also the first warm-up step
    for _ in range(timing.warmup - 1):
        step()
    rates = [batch * timing.window / s for s in common.time_windows(step, timing.windows, timing.window)]
    return {"batch": batch, "params": sum(p.numel() for p in model.parameters()),
            "fwd_gflops_per_image": fwd_flops / batch / 1e9,
            "train_gflops_per_step": (fwd_flops + bwd_flops) / 1e9,
            "img_s": common.median(rates), "img_s_min": min(rates), "img_s_max": max(rates),
            "sample_s_per_eval": time_sampling(model, predict, timing.sample_reps),
            "peak_rss_mib": common.peak_rss_mib()}


def count_train_flops(loss_fn, opt) -> tuple[int, int]:
    """One training step with forward and backward FLOPs counted apart (AdamW has none)."""
    loss, fwd_flops = common.count_flops(loss_fn)
    _, bwd_flops = common.count_flops(loss.backward)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return fwd_flops, bwd_flops


def time_sampling(model, predict, reps: int) -> float:
    """Median seconds of one forward pass (a sampler's network evaluation) under no_grad."""
    model.eval()
    with torch.no_grad():
        predict()  # warm-up: inference takes other kernels than training
        return common.median(common.time_windows(predict, reps, 1))


def child_main(args) -> None:
    torch.set_num_threads(args.threads)
    timing = Timing.from_args(args)
    if args.one == "peak":
        common.emit_result(measure_peak(timing))
    else:
        common.emit_result(measure(SPEC_BY_NAME[args.one], args.precision, args.memory_format, timing,
                                   args.batch))


# ---------------------------------------------------------------------------------- parent side
@dataclass
class Row:
    spec: Spec
    precision: str
    fmt: str
    result: dict  # a child's measurement, or {"error": ...} / {"missing": True}

    @property
    def ok(self) -> bool:
        return "img_s" in self.result


def child_argv(args, one: str, precision: str = "fp32", fmt: str = "channels_last") -> list[str]:
    argv = [os.path.abspath(__file__), "--one", one, "--precision", precision, "--memory-format", fmt,
            "--threads", str(args.threads), "--batch", str(args.batch)]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    return argv + (["--quick"] if args.quick else [])


def resume_path(args) -> str:
    """Where finished measurements of an interrupted run wait (deleted once the report is out)."""
    tag = f"{torch.__version__}-t{args.threads}-b{args.batch}-s{args.steps}-{'q' if args.quick else 'f'}"
    return os.path.join("runs", "bench_throughput", os.path.basename(args.out) + f".{tag}.json")


def run_all(args, libraries: list[str]) -> tuple[dict, list[Row]]:
    """The matmul peak, then every selected (model, precision, format), each in a subprocess.
    Finished measurements go to ``resume_path`` as they come, so a rerun of an interrupted run
    measures only what is left (``--fresh`` ignores them)."""
    path = resume_path(args)
    done = {}
    if os.path.exists(path) and not args.fresh:
        with open(path) as f:
            done = json.load(f)
        log(f"resuming: {len(done)} measurement(s) from {path}")

    def measured(key: str, argv: list[str]) -> dict:
        if key not in done or "error" in done[key]:
            done[key] = common.run_child(argv, args.threads, CHILD_TIMEOUT_S)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(done, f)
            os.replace(path + ".tmp", path)
        return done[key]

    rounds = max(1, args.rounds)
    peaks, results = [], {}
    for r in range(rounds):
        # every round measures everything once, in the same order: this machine's speed drifts by
        # tens of percent over minutes, so a ratio is only fair between measurements of one round
        tag = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
        log(f"matmul peak ({args.threads} threads){tag}")
        peaks.append(measured(f"peak|r{r}", child_argv(args, "peak")))
        for spec in (s for s in SPECS if s.library in libraries and installed(s.library)):
            for precision in PRECISIONS:
                for fmt in spec.formats:
                    log(f"{spec.name} {precision} {fmt}{tag}")
                    res = measured(f"{spec.name}|{precision}|{fmt}|r{r}",
                                   child_argv(args, spec.name, precision, fmt))
                    results.setdefault((spec.name, precision, fmt), []).append(res)
                    log("  " + (f"{res['img_s']:.1f} img/s" if "img_s" in res else str(res)))
    rows = []
    for spec in (s for s in SPECS if s.library in libraries):
        if not installed(spec.library):
            rows.append(Row(spec, "-", "-", {"missing": True}))
            continue
        for precision in PRECISIONS:
            for fmt in spec.formats:
                rows.append(Row(spec, precision, fmt, merge_rounds(results[(spec.name, precision, fmt)])))
    peak = {}
    for prec in PRECISIONS:
        vals = [p["peak_gflops"][prec] for p in peaks if prec in p.get("peak_gflops", {})]
        if vals:
            peak[prec] = common.median(vals)
    return peak, rows


def merge_rounds(results: list[dict]) -> dict:
    """One row from a measurement's rounds: median img/s over rounds, the min-max over all
    windows, every round's img/s kept (``img_s_rounds``) for paired ratios."""
    ok = [r for r in results if "img_s" in r]
    if len(ok) < len(results):
        return next(r for r in results if "img_s" not in r)
    out = dict(ok[0])
    out.update(img_s=common.median([r["img_s"] for r in ok]), img_s_min=min(r["img_s_min"] for r in ok),
               img_s_max=max(r["img_s_max"] for r in ok), img_s_rounds=[r["img_s"] for r in ok],
               sample_s_per_eval=common.median([r["sample_s_per_eval"] for r in ok]),
               peak_rss_mib=max(r["peak_rss_mib"] for r in ok))
    return out


def plot_path(args) -> str | None:
    return None if args.plot == "none" else args.plot or os.path.splitext(args.out)[0] + ".png"


def plot(rows: list[Row], path: str) -> None:
    """Bars: each model's best img/s in fp32 and in bf16 (any memory format)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [s.name for s in SPECS if any(r.ok and r.spec.name == s.name for r in rows)]
    if not names:
        return
    fig = Figure(figsize=(8, 4.2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for k, precision in enumerate(PRECISIONS):
        vals = [(best_row(rows, n, precision).result["img_s"] if best_row(rows, n, precision) else 0.0)
                for n in names]
        bars = ax.bar([i + (k - 0.5) * width for i in range(len(names))], vals, width, label=precision)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylabel("training throughput (images / s)")
    ax.set_title(f"Training step, batch {rows[0].result.get('batch', BATCH)}, 1x32x32, "
                 f"{os.cpu_count()} CPU threads (higher is better)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def best_row(rows: list[Row], name: str, precision: str | None = None) -> Row | None:
    """Fastest measured row of model `name` (at `precision`, or at any: its best precision)."""
    cands = [r for r in rows if r.ok and r.spec.name == name and precision in (None, r.precision)]
    return max(cands, key=lambda r: r.result["img_s"], default=None)


def mfu(row: Row, peak: dict) -> float | None:
    """Achieved FLOP/s (training FLOPs per step x steps/s) over the matmul peak at its precision."""
    if not peak.get(row.precision):
        return None
    steps_s = row.result["img_s"] / row.result["batch"]
    return row.result["train_gflops_per_step"] * steps_s / peak[row.precision]


def fmt_num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[Row], peak: dict) -> list[str]:
    best = {s.name: best_row(rows, s.name) for s in SPECS}
    out = ["| library | model | config | precision | memory format | params (M) | fwd GFLOPs/img "
           "| train GFLOPs/step | img/s (median; min-max) | MFU | sampling s/eval | peak RSS (MiB) |",
           "|" + "---|" * 12]
    for r in rows:
        lib = LIBRARY[r.spec.library].title
        head = f"| {lib} | {r.spec.name} | {r.spec.config} | {r.precision} | {r.fmt} |"
        if not r.ok:
            why = "not installed" if r.result.get("missing") else f"failed: {r.result.get('error')}"
            out.append(head + f" - | - | - | {why} | - | - | - |")
            continue
        m = r.result
        star = " ★" if best[r.spec.name] is r else ""
        img_s = f"**{m['img_s']:.1f}**" if star else f"{m['img_s']:.1f}"
        out.append(head + f" {m['params'] / 1e6:.2f} | {m['fwd_gflops_per_image']:.2f} | "
                   f"{m['train_gflops_per_step']:.0f} | {img_s}{star} "
                   f"({m['img_s_min']:.1f}-{m['img_s_max']:.1f}) | {fmt_num(mfu(r, peak), '.1%')} | "
                   f"{m['sample_s_per_eval']:.3f} | {m['peak_rss_mib']:.0f} |")
    return out


def ratio_line(label: str, a: Row | None, b: Row | None) -> str:
    """'label: x.xx (a img/s / b img/s); FLOP-normalised y.yy'. FLOP-normalised = ratio of
    achieved FLOP/s, which takes out the remaining size difference of a matched pair."""
    if a is None or b is None:
        return f"- {label}: not measured"
    ra, rb = a.result, b.result
    speed = ra["img_s"] / rb["img_s"]
    flops = speed * ra["fwd_gflops_per_image"] / rb["fwd_gflops_per_image"]
    line = (f"- {label}: **{speed:.2f}x** ({ra['img_s']:.1f} vs {rb['img_s']:.1f} img/s); "
            f"FLOP-normalised {flops:.2f}x")
    pa, pb = ra.get("img_s_rounds", []), rb.get("img_s_rounds", [])
    if len(pa) > 1 and len(pa) == len(pb):  # paired: the two measured in the same round
        line += "; per round " + ", ".join(f"{x / y:.2f}x" for x, y in zip(pa, pb))
    return line


def ratios(rows: list[Row]) -> list[str]:
    peers = [p for p in PEERS if best_row(rows, p)]
    if not peers:
        return ["No peer library was measured (not installed or not selected): no ratios."]
    out = ["Ours matched to each peer vs that peer, at equal precision (each at its faster memory format):", ""]
    for peer in peers:
        for prec in PRECISIONS:
            out.append(ratio_line(f"ours-match-{peer} / {peer}, {prec}", best_row(rows, f"ours-match-{peer}", prec),
                                  best_row(rows, peer, prec)))
    # the faster peer (at its best) first: that line is the headline
    peers.sort(key=lambda p: -best_row(rows, p).result["img_s"])
    out += ["", "Each library at its best precision and memory format (first line: the faster peer):", ""]
    for peer in peers:
        a, b = best_row(rows, f"ours-match-{peer}"), best_row(rows, peer)
        label = (f"ours-match-{peer} best ({a.precision if a else '?'}) / {peer} best "
                 f"({b.precision}, {b.fmt})" + (" — the faster peer" if peer == peers[0] else ""))
        out.append(ratio_line(label, a, b))
    return out


def matched_section(rows: list[Row]) -> list[str]:
    """Params and forward FLOPs of each matched pair side by side, with the deviation."""
    out = ["| peer | peer params (M) | ours params (M) | Δ params | peer fwd GFLOPs/img | ours fwd GFLOPs/img "
           "| Δ FLOPs | within ±15% |", "|" + "---|" * 8]
    for peer in PEERS:
        a, b = best_row(rows, f"ours-match-{peer}"), best_row(rows, peer)
        if a is None or b is None:
            continue
        ra, rb = a.result, b.result
        dp = ra["params"] / rb["params"] - 1
        df = ra["fwd_gflops_per_image"] / rb["fwd_gflops_per_image"] - 1
        ok = "yes" if max(abs(dp), abs(df)) <= MATCH_TOLERANCE else "**NO**"
        out.append(f"| {peer} | {rb['params'] / 1e6:.2f} | {ra['params'] / 1e6:.2f} | {dp:+.1%} | "
                   f"{rb['fwd_gflops_per_image']:.2f} | {ra['fwd_gflops_per_image']:.2f} | {df:+.1%} | {ok} |")
    return out if len(out) > 2 else []


def report(args, peak: dict, rows: list[Row]) -> str:
    timing = Timing.from_args(args)
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    lines = ["# Training throughput: diffusionlab vs peers", "",
             f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `{command}`" + ("  (**--quick: few steps, noisy numbers**)" if args.quick else ""),
             f"- torch: {torch.__version__}",
             f"- CPU: {common.cpu_model()} ({os.cpu_count()} logical CPUs)",
             f"- threads: {args.threads}",
             f"- step: forward + MSE + backward + AdamW(lr=1e-4), batch {args.batch}, {IMAGE[0]}x{IMAGE[1]}x{IMAGE[2]} "
             f"random data; {timing.warmup} warm-up step(s), then median of {timing.windows} timed window(s) of "
             f"{timing.window} step(s); {max(1, args.rounds)} round(s): everything is measured once per round, in "
             f"turn, and img/s is the median over rounds (the machine's speed drifts between minutes, so the "
             f"ratios also list each round's own)",
             f"- bf16 = torch.autocast('cpu', bfloat16); FLOPs from FlopCounterMode (matmul/conv/attention only)",
             "- matmul peak (n=%d): fp32 %s GFLOP/s, bf16 %s GFLOP/s" % (
                 timing.peak_n, fmt_num(peak.get("fp32"), ".0f"), fmt_num(peak.get("bf16"), ".0f")),
             "", "★ = the model's fastest precision / memory format. MFU = training FLOP/s / matmul peak "
             "at the row's precision. Sampling = one forward at the same batch under no_grad.", ""]
    lines += table(rows, peak)
    if plot_path(args):
        lines += ["", f"![Training throughput, best memory format per precision]({os.path.basename(plot_path(args))})"]
    match = matched_section(rows)
    if match:
        lines += ["", "## Matched configs", ""] + match
    lines += ["", "## Ratios", ""] + ratios(rows)
    return "\n".join(lines) + "\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- --search
def meta_stats(library: str, kwargs: dict) -> tuple[float, float]:
    """(params in M, forward GFLOPs per image) of a model built on the meta device (no compute)."""
    with torch.device("meta"):
        model = LIBRARY[library].build(kwargs)
        x, t = torch.zeros(1, *IMAGE), torch.ones(1)
    _, flops = common.count_flops(lambda: LIBRARY[library].forward(model, x, t))
    return sum(p.numel() for p in model.parameters()) / 1e6, flops / 1e9


def search(top: int = 15) -> None:
    """Our resnet, 3-level configs within the tolerance of each peer, closest first."""
    grid = [dict(dim=d, dim_mults=m, channels=1, num_res_blocks=n, linear_attn=lin, patch_size=p)
            for d in (32, 48, 64, 80, 96, 112, 128) for m in ((1, 2, 2), (1, 1, 2), (1, 2, 3), (1, 2, 4))
            for n in (1, 2, 3) for lin in (False, True) for p in (1, 2)]
    ours = [(kw, *meta_stats("ours", kw)) for kw in grid]
    for peer, pkw in PEERS.items():
        if not installed(peer):
            print(f"{peer}: not installed")
            continue
        pp, pf = meta_stats(peer, pkw)
        print(f"{peer}: {pp:.2f} M params, {pf:.2f} GFLOPs/img")
        dev = lambda r: max(abs(r[1] / pp - 1), abs(r[2] / pf - 1))  # noqa: E731
        ranked = [r for r in sorted(ours, key=dev) if dev(r) <= MATCH_TOLERANCE]
        for kw, p, f in ranked[:top]:
            print(f"  {p:.2f} M ({p / pp - 1:+.1%})  {f:.2f} GF ({f / pf - 1:+.1%})  {kw}")


# ---------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps and a small matmul: a smoke test")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per config "
                    "(default 10, or 2 with --quick)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"markdown file to write (default {DEFAULT_OUT})")
    ap.add_argument("--only", default=",".join(LIBRARIES), help="comma list of: " + ",".join(LIBRARIES))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per measurement")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH}; smaller only for "
                    "smoke tests)")
    ap.add_argument("--rounds", type=int, default=2, help="measure everything this many times in turn and "
                    "report the median (ratios also per round); default 2")
    ap.add_argument("--fresh", action="store_true", help="ignore the measurements an interrupted run left")
    ap.add_argument("--plot", default=None, help="bar chart PNG (default: --out with .png; 'none': no chart)")
    ap.add_argument("--search", action="store_true", help="print our configs closest to each peer and exit")
    # internal: measure one thing in this process and print a RESULT line
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS, help=argparse.SUPPRESS)
    ap.add_argument("--memory-format", default="channels_last", choices=("channels_last", "contiguous"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    libs = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = set(libs) - set(LIBRARIES)
    if bad:
        ap.error(f"--only: unknown {sorted(bad)}; choose from {','.join(LIBRARIES)}")
    args.libraries = libs
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    if args.search:
        torch.set_num_threads(args.threads)
        return search()
    peak, rows = run_all(args, args.libraries)
    text = report(args, peak, rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    if plot_path(args):
        plot(rows, plot_path(args))
    if os.path.exists(resume_path(args)):
        os.remove(resume_path(args))  # the run is complete: the next one measures afresh
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
