"""Pictures of what a diffusion model does: sample grids, reverse-process GIFs, the
"image noised at t = 0, 50, 100, ..." strip, and loss curves.

Conventions (the library's): images are float tensors ``[B, C, H, W]`` in ``[-1, 1]``
with ``C`` = 1 (greyscale) or 3 (RGB). Arrays handed to PIL are ``uint8``.

Every file is written atomically: into a temporary file in the destination folder,
then moved into place with :func:`os.replace`, so a crash (or a reader polling the file
during training) never sees a half-written PNG/GIF. Parent folders are created.

matplotlib is imported lazily and only through its object-oriented API with the Agg
canvas (no ``pyplot``, no global figure state, works headless).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.images import as_batch as _as_batch, to_uint8
from ..core.files import atomic_path as _atomic_path
from ..core.process import q_sample

__all__ = [
    "to_uint8",
    "make_grid",
    "save_grid",
    "save_gif",
    "noising_strip",
    "save_noising_strip",
    "plot_losses",
    "plot_eval",
    "read_jsonl",
]

MAX_GIF_FRAMES = 60


# --------------------------------------------------------------------------- helpers
def _upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"upscale must be an integer >= 1, got {factor}")
    if factor == 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


# --------------------------------------------------------------------------- grids
def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: float = -1.0) -> np.ndarray:
    """Tile a batch into one ``uint8`` image (torchvision-style layout).

    ``nrow`` images per row; the grid is
    ``(rows * (H + padding) + padding) x (cols * (W + padding) + padding)`` with
    ``cols = min(nrow, B)``, ``rows = ceil(B / cols)``; empty cells and padding take
    ``pad_value`` (in [-1, 1]; -1 = black).

    Returns ``[Hg, Wg]`` (2-D) for greyscale input (C = 1) and ``[Hg, Wg, 3]`` for RGB,
    both directly savable with ``PIL.Image.fromarray``.
    """
    x = _as_batch(images)
    b, c, h, w = x.shape
    if b == 0:
        raise ValueError("make_grid needs at least one image")
    nrow = max(1, int(nrow))
    padding = max(0, int(padding))
    cols = min(nrow, b)
    rows = math.ceil(b / cols)
    tiles = to_uint8(x)  # [B,H,W,C]
    pad = int(round((min(max(float(pad_value), -1.0), 1.0) + 1.0) * 127.5))
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                   pad, dtype=np.uint8)
    for i in range(b):
        r, k = divmod(i, cols)
        y0 = padding + r * (h + padding)
        x0 = padding + k * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = tiles[i]
    return grid[:, :, 0] if c == 1 else grid


def save_grid(images, path, nrow: int = 8, upscale: int = 1, padding: int = 2,
              pad_value: float = -1.0) -> Path:
    """Write ``make_grid(images)`` as a PNG, enlarged ``upscale`` times (nearest neighbour)."""
    grid = _upscale(make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value), upscale)
    with _atomic_path(path, ".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return Path(path)


def save_labelled_grid(images, path, nrow: int, col_labels: Sequence[str] = (), row_labels: Sequence[str] = (),
                       upscale: int = 3, padding: int = 2) -> Path:
    """``save_grid`` with a caption above each column and / or left of each row (Pillow's
    built-in bitmap font: no font files, nothing downloaded)."""
    from PIL import ImageDraw, ImageFont

    grid = Image.fromarray(_upscale(make_grid(images, nrow=nrow, padding=padding), upscale)).convert("L")
    font = ImageFont.load_default()
    cell = (grid.width - padding * upscale) / max(1, min(nrow, len(_as_batch(images))))
    rows = math.ceil(len(_as_batch(images)) / max(1, nrow))
    row_h = (grid.height - padding * upscale) / max(1, rows)
    left = max([int(font.getlength(t)) for t in row_labels] + [0]) + (8 if row_labels else 0)
    top = 14 if col_labels else 0
    canvas = Image.new("L", (grid.width + left, grid.height + top), 255)
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    for k, t in enumerate(col_labels):
        w = font.getlength(t)
        draw.text((left + padding * upscale + k * cell + (cell - w) / 2, 1), t, fill=0, font=font)
    for r, t in enumerate(row_labels):
        draw.text((2, top + padding * upscale + r * row_h + row_h / 2 - 6), t, fill=0, font=font)
    with _atomic_path(path, ".png") as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _subsample_indices(n: int, max_frames: int) -> list[int]:
    """Evenly spaced indices into ``range(n)``, at most ``max_frames``, first and last kept."""
    if n <= max_frames:
        return list(range(n))
    if max_frames < 2:
        return [n - 1]
    idx = np.unique(np.round(np.linspace(0, n - 1, max_frames)).astype(int))
    return [int(i) for i in idx]


def save_gif(frames: Sequence, path, nrow: int = 8, duration: float = 0.08,
             hold_last: float = 1.0, upscale: int = 2, max_frames: int = MAX_GIF_FRAMES,
             padding: int = 2) -> Path:
    """Animate the reverse process: each ``[B,C,H,W]`` tensor in ``frames`` becomes one grid.

    ``duration`` seconds per frame; the last frame is shown for ``hold_last`` seconds
    (if larger than ``duration``). Loops forever. More than ``max_frames`` frames are
    subsampled evenly, always keeping the first (noise) and last (image) frame.
    Written with Pillow (GIF durations are in 1/100 s, so very short ones are rounded);
    consecutive frames whose grids are pixel-identical are merged by Pillow into one
    frame with the summed duration, so the file can hold fewer frames than given.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    keep = _subsample_indices(len(frames), int(max_frames))
    grids = [_upscale(make_grid(frames[i], nrow=nrow, padding=padding), upscale) for i in keep]
    shapes = {g.shape for g in grids}
    if len(shapes) != 1:
        raise ValueError(f"all frames must give grids of the same size, got {sorted(shapes)}")
    pil = [Image.fromarray(g) for g in grids]
    ms = max(10, int(round(float(duration) * 1000)))
    durations = [ms] * len(pil)
    durations[-1] = max(ms, int(round(float(hold_last) * 1000)))
    with _atomic_path(path, ".gif") as tmp:
        pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:],
                    duration=durations if len(pil) > 1 else durations[0], loop=0,
                    optimize=False, disposal=1)
    return Path(path)


# --------------------------------------------------------------------------- noising strip
def noising_strip(image, abar, ts: Sequence[int], generator: torch.Generator | None = None,
                  clamp: bool = True) -> torch.Tensor:
    """The forward process (``process.q_sample``) applied to one image at several steps, with ONE shared noise.

    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` where ``abar`` is 1-D of length T with
    ``abar[t-1]`` belonging to step ``t`` and ``t = 0`` meaning the clean image (abar = 1).
    ``eps`` is drawn once, from ``generator`` (a fresh generator seeded with 0 when None, so
    the result is reproducible and the global RNG is never touched).

    Returns ``[len(ts), C, H, W]``, clamped to [-1, 1] for display unless ``clamp=False``.
    """
    x0 = _as_batch(image) if not isinstance(image, torch.Tensor) else image.detach()
    if x0.ndim == 3:
        x0 = x0.unsqueeze(0)
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"expected one image [C,H,W] or [1,C,H,W], got {tuple(x0.shape)}")
    x0 = x0.float()
    abar = torch.as_tensor(abar, dtype=torch.float64).flatten().cpu()
    T = abar.numel()
    ts = [int(t) for t in ts]
    bad = [t for t in ts if t < 0 or t > T]
    if bad:
        raise ValueError(f"timesteps must lie in [0, {T}] (0 = clean image), got {bad}")
    if generator is None:
        generator = torch.Generator(device=x0.device).manual_seed(0)
    eps = torch.randn(x0.shape, generator=generator, device=generator.device,
                      dtype=torch.float32).to(x0.device)
    out = [x0.clone() if t == 0 else q_sample(abar, x0, torch.tensor([t - 1]), noise=eps) for t in ts]
    res = torch.cat(out, dim=0)
    return res.clamp(-1.0, 1.0) if clamp else res


def save_noising_strip(image, abar, ts: Sequence[int], path, upscale: int = 4,
                       generator: torch.Generator | None = None, dpi: int = 100,
                       title: str | None = None) -> Path:
    """One row of panels x_t (shared noise), each titled ``"t=..."``, saved as a PNG."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ts = [int(t) for t in ts]
    strip = to_uint8(noising_strip(image, abar, ts, generator=generator))  # [N,H,W,C]
    n, h, w, c = strip.shape
    upscale = max(1, int(upscale))
    pw, ph = w * upscale / dpi, h * upscale / dpi  # panel size in inches, pixel-exact
    gap, side, bottom, top = 0.1, 0.05, 0.05, 0.3 + (0.35 if title else 0.0)
    fw, fh = 2 * side + n * pw + (n - 1) * gap, bottom + ph + top
    fig = Figure(figsize=(fw, fh), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, (t, img) in enumerate(zip(ts, strip)):
        ax = fig.add_axes(((side + i * (pw + gap)) / fw, bottom / fh, pw / fw, ph / fh))
        img = _upscale(img, upscale)
        if c == 1:
            ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(f"t={t}", fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, y=1.0 - 0.05 / fh, va="top")
    with _atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


# --------------------------------------------------------------------------- metrics
def read_jsonl(path) -> list[dict]:
    """Read a metrics ``.jsonl`` file (one JSON object per line).

    Blank lines are skipped; a truncated/garbled LAST line (a writer killed mid-line, or
    one still writing) is dropped silently; a garbled line elsewhere is dropped with a
    warning. Lines that are valid JSON but not objects are ignored.
    """
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict] = []
    bad = 0
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        try:
            rec = json.loads(s)
        except ValueError:
            if i != len(lines) - 1:
                bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if bad:
        warnings.warn(f"{path}: skipped {bad} malformed line(s)", stacklevel=2)
    return records


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ema(values: Sequence[float], beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as in Adam / TensorBoard smoothing)."""
    out = np.empty(len(values))
    m = 0.0
    for i, v in enumerate(values):
        m = beta * m + (1.0 - beta) * v
        out[i] = m / (1.0 - beta ** (i + 1))
    return out


def plot_losses(metrics: Sequence[dict], path, ema: float = 0.98,
                title: str = "Training loss", panels: Sequence[str] = ()) -> Path:
    """Loss curves from metrics records (e.g. :func:`read_jsonl` of ``metrics.jsonl``).

    Records with ``step`` and ``loss`` are training points (drawn raw and faint, plus a
    bold bias-corrected EMA with factor ``ema``); records with ``step`` and ``val_loss``
    are validation points (markers). Each name in ``panels`` (e.g. DPO's ``reward_accuracy``)
    gets a panel below, drawn the same way from ``name`` and ``val_name``. Other keys are
    ignored. Log-scale y for the loss when all its values are positive. Saved atomically as a PNG.
    """
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(7, 4.5 + 2.6 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1 + len(panels), 1, i + 1) for i in range(1 + len(panels))]
    values = _plot_series(axes[0], metrics, "loss", ema, log=True)
    if not values:
        axes[0].text(0.5, 0.5, "no loss records yet", ha="center", va="center", transform=axes[0].transAxes)
    for ax, name in zip(axes[1:], panels):
        if _plot_series(ax, metrics, name, ema, log=False):
            ax.legend(loc="best")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    if panels:
        axes[-1].set_xlabel("training step")
    return _finish_plot(fig, axes[0], path, "" if panels else "training step", "loss", title, bool(values))


def _plot_series(ax, metrics: Sequence[dict], key: str, ema: float, log: bool) -> list:
    """Training points of ``key`` (raw, faint, plus their EMA) and validation points of
    ``val_<key>`` on ``ax``; returns the values drawn."""
    train, val = [], []
    for rec in metrics:
        if not isinstance(rec, dict):
            continue
        step = _num(rec.get("step"))
        if step is None:
            continue
        v, vv = _num(rec.get(key)), _num(rec.get(f"val_{key}"))
        if v is not None:
            train.append((step, v))
        if vv is not None:
            val.append((step, vv))
    train.sort(key=lambda p: p[0])
    val.sort(key=lambda p: p[0])
    label = "training loss" if key == "loss" else f"training {key.replace('_', ' ')}"
    if train:
        s, l = np.array([p[0] for p in train]), np.array([p[1] for p in train])
        ax.plot(s, l, color="tab:blue", alpha=0.25, linewidth=0.8, label=label)
        if len(l) > 1:
            beta = min(float(ema), max(0.0, 1 - 8 / len(l)))  # short logs: less lag
            ax.plot(s, _ema(l, beta), color="tab:blue", linewidth=2.0, label=f"{label} (EMA {beta:.2g})")
    if val:
        ax.plot([p[0] for p in val], [p[1] for p in val], color="tab:orange", marker="o",
                markersize=5, linewidth=1.2, label="validation" if key != "loss" else "validation loss")
    values = [p[1] for p in train] + [p[1] for p in val]
    if log and values and min(values) > 0:
        ax.set_yscale("log")
    return values


def _finish_plot(fig, ax, path, xlabel: str, ylabel: str, title: str, legend: bool) -> Path:
    """Labels, grid, legend, and an atomic PNG write."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(loc="upper right")
    fig.tight_layout()
    with _atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def plot_eval(metrics: Sequence[dict], path, key: str = "eval_fd", x_key: str = "train_seconds",
              title: str = "Sample quality during training") -> Path:
    """``key`` (default the feature FD of ``--eval-every`` records) against training time in
    seconds, with the real-vs-real floor as a dashed line when recorded. Saved atomically."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pts = sorted((_num(r.get(x_key)), _num(r.get(key))) for r in metrics
                 if isinstance(r, dict) and _num(r.get(key)) is not None and _num(r.get(x_key)) is not None)
    floors = [_num(r.get(key + "_floor")) for r in metrics if isinstance(r, dict) and _num(r.get(key + "_floor")) is not None]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="tab:blue", label=key.replace("eval_", ""))
    else:
        ax.text(0.5, 0.5, "no evaluation records", ha="center", va="center", transform=ax.transAxes)
    if floors:
        ax.axhline(floors[0], color="tab:gray", linestyle="--", label="real-vs-real floor")
    return _finish_plot(fig, ax, path, "training time (s)" if x_key == "train_seconds" else x_key,
                        key.replace("eval_", "").upper() + " (lower is better)", title, bool(pts))
