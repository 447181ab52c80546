import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.evaluation.viz import (
    make_grid,
    noising_strip,
    plot_losses,
    read_jsonl,
    save_gif,
    save_grid,
    save_noising_strip,
    to_uint8,
)

torch.set_num_threads(1)


def _rand(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def test_to_uint8_endpoints_and_layout():
    x = torch.tensor([-1.0, 1.0, -3.0, 5.0, 0.0]).view(1, 1, 1, 5)
    u = to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (1, 1, 5, 1)
    assert u[0, 0, :, 0].tolist() == [0, 255, 0, 255, 128]
    rgb = to_uint8(_rand((2, 3, 4, 5)))
    assert rgb.shape == (2, 4, 5, 3)


def test_make_grid_shape_and_values():
    imgs = torch.full((64, 1, 32, 32), 1.0)
    g = make_grid(imgs, nrow=8, padding=2)
    side = 8 * 34 + 2
    assert g.shape == (side, side) and g.dtype == np.uint8
    assert g[0, 0] == 0  # padding at pad_value -1 -> 0
    assert g[2, 2] == 255 and g[2 + 31, 2 + 31] == 255 and g[34, 2] == 0
    # RGB keeps 3 channels; partial last row; tile placement
    imgs = -torch.ones(10, 3, 4, 4)
    imgs[9] = 1.0
    g = make_grid(imgs, nrow=4, padding=1)
    assert g.shape == (3 * 5 + 1, 4 * 5 + 1, 3)
    y0, x0 = 1 + 2 * 5, 1 + 1 * 5  # image 9 -> row 2, col 1
    assert (g[y0:y0 + 4, x0:x0 + 4] == 255).all()
    assert (g[y0:y0 + 4, x0 + 5:x0 + 9] == 0).all()  # empty cell is pad colour
    Image.fromarray(g)  # PIL accepts it


def test_save_grid_upscale(tmp_path):
    p = tmp_path / "a" / "b" / "grid.png"
    save_grid(_rand((6, 1, 8, 8)), p, nrow=3, upscale=3)
    im = np.asarray(Image.open(p))
    assert im.shape == ((2 * 10 + 2) * 3, (3 * 10 + 2) * 3)
    assert list(p.parent.iterdir()) == [p]  # no temp file left behind


def _frames(n, b=4):
    return [_rand((b, 1, 8, 8), seed=i) for i in range(n)]


def test_save_gif_frames(tmp_path):
    p = tmp_path / "gif" / "rev.gif"
    frames = _frames(5)
    save_gif(frames, p, nrow=2, upscale=2, duration=0.05, hold_last=1.0)
    arr = iio.imread(p, index=None)
    assert arr.shape[0] == 5
    grid0 = np.repeat(np.repeat(make_grid(frames[0], nrow=2), 2, 0), 2, 1)
    assert arr.shape[1:3] == grid0.shape
    first = arr[0] if arr.ndim == 3 else arr[0, ..., 0]
    assert np.abs(first.astype(int) - grid0.astype(int)).max() <= 1
    meta = [iio.immeta(p, index=i) for i in (0, 4)]
    assert meta[1]["duration"] >= 900 and meta[0]["duration"] < 100
    assert iio.immeta(p, index=0).get("loop", 0) == 0


def test_save_gif_subsamples_keeping_ends(tmp_path):
    p = tmp_path / "rev.gif"
    frames = _frames(150, b=2)
    save_gif(frames, p, nrow=2, upscale=1)
    arr = iio.imread(p, index=None)
    assert 2 <= arr.shape[0] <= 60
    for k, src in ((0, frames[0]), (-1, frames[-1])):
        got = arr[k] if arr.ndim == 3 else arr[k, ..., 0]
        assert np.abs(got.astype(int) - make_grid(src, nrow=2).astype(int)).max() <= 1


def test_noising_strip():
    T = 200
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    x0 = _rand((3, 16, 16)) * 0.3
    ts = [0, 50, 100, 150, 199]
    strip = noising_strip(x0, abar, ts, generator=torch.Generator().manual_seed(1))
    assert strip.shape == (5, 3, 16, 16)
    assert torch.equal(strip[0], x0)
    assert strip.min() >= -1 and strip.max() <= 1
    resid = [(strip[i] - x0).var().item() for i in range(5)]
    assert all(a < b for a, b in zip(resid, resid[1:]))
    # same eps for every t: (x_t - sqrt(abar) x0) / sqrt(1 - abar) is identical
    raw = noising_strip(x0[None], abar, ts, generator=torch.Generator().manual_seed(1), clamp=False)
    eps = [(raw[i] - math.sqrt(abar[t - 1]) * x0) / math.sqrt(1 - abar[t - 1])
           for i, t in enumerate(ts) if t > 0]
    for e in eps[1:]:
        torch.testing.assert_close(e, eps[0], atol=1e-4, rtol=1e-4)
    # reproducible
    again = noising_strip(x0, abar, ts, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, strip)
    with pytest.raises(ValueError, match="0, 200"):
        noising_strip(x0, abar, [201])


def test_save_noising_strip(tmp_path):
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 200), 0)
    p = tmp_path / "strip" / "noise.png"
    save_noising_strip(_rand((1, 32, 32)), abar, [0, 50, 100, 150, 199], p, upscale=2)
    im = Image.open(p)
    assert im.format == "PNG" and im.size[0] > im.size[1] > 64


def test_plot_losses_and_read_jsonl(tmp_path):
    mpath = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1), "lr": 1e-3, "kind": "train"})
             for s in range(0, 200, 5)]
    lines.insert(10, "")
    lines.append(json.dumps({"step": 100, "val_loss": 0.02, "kind": "val"}))
    lines.append(json.dumps({"step": 195, "loss": 0.01, "val_loss": 0.015}))
    text = "\n".join(lines) + '\n{"step": 200, "lo'  # writer killed mid-line
    mpath.write_text(text)
    recs = read_jsonl(mpath)
    assert len(recs) == 42 and recs[-1]["val_loss"] == 0.015
    out = tmp_path / "plots" / "loss.png"
    plot_losses(recs, out)
    assert Image.open(out).format == "PNG"
    plot_losses([], tmp_path / "empty.png")  # no data: still a picture, no crash
    assert (tmp_path / "empty.png").exists()
