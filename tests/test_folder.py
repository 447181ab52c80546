import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.data.folder import ImageFolderDataset, export_pngs, random_hflip

torch.set_num_threads(1)


def _img(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    return im.convert(mode) if mode != "RGB" else im


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "other").mkdir()
    _img(40, 48, 1).save(root / "a.png")
    _img(48, 40, 2).save(root / "sub" / "b.JPG", format="JPEG", quality=95)
    _img(36, 36, 3).save(root / "sub" / "deeper" / "c.webp", format="WEBP")
    _img(64, 32, 4, "L").save(root / "other" / "d.bmp")
    _img(40, 40, 5).save(root / "other" / "e.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_recursive_scan_rgb_and_grey(mixed):
    ds = ImageFolderDataset(mixed, image_size=32)
    rel = [p.relative_to(mixed).as_posix() for p in ds.files]
    assert rel == ["a.png", "other/d.bmp", "other/e.png", "sub/b.JPG", "sub/deeper/c.webp"]
    x = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.8 and x.max() > 0.8
    allx = ds.load_all()
    assert allx.shape == (5, 3, 32, 32)
    d = allx[1]  # greyscale bmp -> 3 equal channels
    assert torch.equal(d[0], d[1]) and torch.equal(d[1], d[2])
    grey = ImageFolderDataset(mixed, image_size=16, channels=1)
    assert grey.load_all().shape == (5, 1, 16, 16)
    assert torch.equal(ds[-1], ds[4])


def test_exact_values_roundtrip(tmp_path):
    imgs = torch.linspace(-1, 1, 2 * 3 * 8 * 8).view(2, 3, 8, 8)
    paths = export_pngs(imgs, tmp_path / "out")
    assert [p.name for p in paths] == ["00000.png", "00001.png"]
    ds = ImageFolderDataset(tmp_path / "out", image_size=8)
    back = ds.load_all()
    assert (back - imgs).abs().max() <= 1 / 127.5 + 1e-6
    export_pngs(imgs[:, :1], tmp_path / "grey")
    assert Image.open(tmp_path / "grey" / "00000.png").mode == "L"


def test_corrupt_files_skipped_with_one_warning(mixed):
    buf = io.BytesIO()
    _img(64, 64, 9).save(buf, format="JPEG", quality=90)
    (mixed / "sub" / "trunc.jpeg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (mixed / "fake.png").write_text("I am text, not a PNG")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(mixed, image_size=32)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1 and "skipped 2" in msgs[0] and "fake.png" in msgs[0]
    assert len(ds) == 5 and len(ds.skipped) == 2
    assert ds.load_all().shape == (5, 3, 32, 32)


def test_runtime_failure_falls_back_to_next(mixed):
    ds = ImageFolderDataset(mixed, image_size=32)
    (mixed / "a.png").write_bytes(b"broken after the scan")
    with pytest.warns(UserWarning, match="a.png"):
        x = ds[0]
    assert torch.equal(x, ds[1])
    assert len(ds.runtime_failures) == 1


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", image_size=32)
    f = tmp_path / "one.png"
    _img(40, 40).save(f)
    with pytest.raises(ValueError, match="is a file; pass the folder that contains the images"):
        ImageFolderDataset(f, image_size=32)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no images found.*\.png.*\.jpg"):
        ImageFolderDataset(empty, image_size=32)


def test_too_small_images(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    _img(64, 64).save(root / "big.png")
    _img(20, 50).save(root / "tiny.png")
    with pytest.raises(ValueError, match=r"1 of 2 image.*tiny\.png is 20x50.*allow_upscale"):
        ImageFolderDataset(root, image_size=32)
    ds = ImageFolderDataset(root, image_size=32, allow_upscale=True)
    assert ds.load_all().shape == (2, 3, 32, 32)


def test_random_hflip_selected_and_reproducible():
    x = torch.randn(64, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    y, mask = random_hflip(x, torch.Generator().manual_seed(7), return_mask=True)
    assert 0 < int(mask.sum()) < 64
    assert torch.equal(y[mask], x[mask].flip(-1))
    assert torch.equal(y[~mask], x[~mask])
    y2 = random_hflip(x, torch.Generator().manual_seed(7))
    assert torch.equal(y, y2)
    assert not torch.equal(y, random_hflip(x, torch.Generator().manual_seed(8)))
    with pytest.raises(TypeError):
        random_hflip(x, None)
