"""Bad input, fuzzed (Hypothesis): image folders, labels.csv, captions.jsonl, preference pairs,
.npy arrays, checkpoint configs and command-line values. Every case is read, skipped and counted,
or refused with a clear error of the exit-2 kind (``UserError`` / ``ValueError`` naming the file;
``CheckpointError``): never another exception, never a hang.

Profiles: the default suite runs a capped one (``HYPOTHESIS_PROFILE`` unset: ``suite``, 15
examples a test); ``make test-reliability`` runs ``reliability`` (200 a test)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusionlab.data.folder import ImageFolderDataset
from diffusionlab.data.images import MAX_PIXELS, read_image_array
from diffusionlab.errors import UserError

settings.register_profile("suite", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("reliability", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
COUNTS: dict[str, int] = {}  # cases tried per kind (printed by make test-reliability with -s)


def _count(kind: str) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + 1


# ------------------------------------------------------------------ image files of every awkward kind
def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels (10 gigapixels) with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _good(rng: np.random.Generator, mode: str = "L", size: int = 12) -> Image.Image:
    a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB").convert(mode)


def make_file(kind: str, seed: int) -> tuple[str, bytes]:
    """(extension, bytes) of one file of ``kind``."""
    rng = np.random.default_rng(seed)
    if kind == "good":
        return "png", _png(_good(rng))
    if kind == "truncated":
        data = _png(_good(rng))
        return "png", data[: int(rng.integers(1, len(data) - 1))]
    if kind == "zero":
        return "png", b""
    if kind == "text-as-jpg":
        return "jpg", b"this is not an image\n" * int(rng.integers(1, 50))
    if kind == "random-bytes":
        return "webp", rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
    if kind == "bomb":
        return "png", bomb_png()
    if kind == "cmyk":
        buf = io.BytesIO()
        _good(rng, "CMYK").save(buf, "JPEG")
        return "jpg", buf.getvalue()
    if kind == "16-bit":
        a = rng.integers(0, 65536, (12, 12), dtype=np.uint16)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")  # mode I;16
        return "png", buf.getvalue()
    if kind == "palette-transparency":
        im = _good(rng, "RGB").convert("P")
        buf = io.BytesIO()
        im.save(buf, "PNG", transparency=0)
        return "png", buf.getvalue()
    if kind == "animated":
        frames = [_good(rng, "L") for _ in range(3)]
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        return "gif", buf.getvalue()
    if kind == "flipped-bytes":
        data = bytearray(_png(_good(rng)))
        for i in rng.integers(8, len(data), 5):
            data[i] ^= 0xFF
        return "png", bytes(data)
    raise ValueError(kind)


KINDS = ("good", "truncated", "zero", "text-as-jpg", "random-bytes", "bomb", "cmyk", "16-bit",
         "palette-transparency", "animated", "flipped-bytes")
READABLE = {"good", "cmyk", "16-bit", "palette-transparency", "animated"}


@given(files=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2 ** 16)), min_size=1, max_size=12),
       channels=st.sampled_from([1, 3]))
def test_a_folder_of_awkward_files_is_read_or_refused_clearly(tmp_path_factory, files, channels):
    root = tmp_path_factory.mktemp("folder")
    for i, (kind, seed) in enumerate(files):
        ext, data = make_file(kind, seed)
        (root / f"{i:03d}-{kind}.{ext}").write_bytes(data)
        _count(f"image:{kind}")
    readable = sum(k in READABLE for k, _ in files)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = ImageFolderDataset(root, 8, channels=channels)
        except ValueError as e:
            assert readable == 0 or "could be read" in str(e), e
            assert str(root) in str(e)
            return
        assert len(ds) + len(ds.skipped) == len(files)
        assert len(ds) >= readable  # every readable kind is kept (a mangled one may still decode)
        assert all(k not in READABLE or (root / f"{i:03d}-{k}.{make_file(k, s)[0]}") in ds.files
                   for i, (k, s) in enumerate(files))
        x = ds.load_all()
    assert x.shape[1:] == (channels, 8, 8) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "ok.png")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = ImageFolderDataset(tmp_path, 8, channels=1)
    assert [p.name for p, _ in ds.skipped] == ["bomb.png"]
    assert 100_000 * 100_000 > MAX_PIXELS


def test_a_symlink_loop_is_walked_once(tmp_path):
    sub = tmp_path / "a"
    sub.mkdir()
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(sub / "x.png")
    os.symlink(tmp_path, sub / "loop")  # a -> root -> a -> ...
    ds = ImageFolderDataset(tmp_path, 8, channels=1)
    assert len(ds) == 1


def test_an_unreadable_file_is_skipped_and_counted(tmp_path, monkeypatch):
    """As root, chmod proves nothing: the permission error is injected at the open call."""
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / name)
    real_open = Image.open

    def guarded(fp, *a, **k):
        if str(fp).endswith("b.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", guarded)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = ImageFolderDataset(tmp_path, 8, channels=1)
    assert [p.name for p in ds.files] == ["a.png"] and "PermissionError" in ds.skipped[0][1]


# ------------------------------------------------------------------ labels.csv and captions.jsonl
def _labelled_folder(root: Path, n: int = 4) -> None:
    for i in range(n):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(root / f"{i}.png")


TEXTS = st.one_of(st.binary(max_size=300),
                  st.lists(st.lists(st.sampled_from(["0.png", "1.png", "2.png", "3.png", "9.png", "a", "", "7",
                                                    "file", "label", "x,y", "\u00e9", "\"q"]),
                                    max_size=4), max_size=8)
                  .map(lambda rows: "\n".join(",".join(r) for r in rows).encode()))


def _read_table(tmp_path_factory, name: str, data: bytes, read):
    """``read(dataset)`` of a folder of four images with ``name`` holding ``data``: its result,
    or None when it was refused with a ValueError naming the file."""
    root = tmp_path_factory.mktemp(name.split(".")[0])
    _labelled_folder(root)
    (root / name).write_bytes(data)
    _count(name)
    ds = ImageFolderDataset(root, 8, channels=1)
    try:
        return read(ds)
    except ValueError as e:
        assert name in str(e), e
        return None


@given(data=TEXTS)
def test_labels_csv_is_read_or_refused_naming_the_file(tmp_path_factory, data):
    out = _read_table(tmp_path_factory, "labels.csv", data, lambda ds: ds.class_labels())
    if out is not None:
        labels, names = out
        assert len(labels) == 4 and len(names) >= 2


CAPTIONS = st.one_of(st.binary(max_size=300),
                     st.lists(st.one_of(st.fixed_dictionaries({"file": st.sampled_from(["0.png", "1.png", "2.png",
                                                                                       "3.png", "x.png"]),
                                                               "caption": st.text(max_size=20)}),
                                        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                                        st.integers(), st.text(max_size=10)), max_size=6)
                     .map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()))


@given(data=CAPTIONS)
def test_captions_jsonl_is_read_or_refused_naming_the_file(tmp_path_factory, data):
    caps = _read_table(tmp_path_factory, "captions.jsonl", data, lambda ds: ds.captions())
    if caps is not None:
        assert len(caps) == 4 and all(isinstance(c, str) for c in caps)


# ------------------------------------------------------------------ preference pairs
PAIR_LINES = st.lists(st.one_of(
    st.fixed_dictionaries({"chosen": st.sampled_from(["images/0.png", "images/1.png", "images/9.png", "/etc/passwd",
                                                      "../x.png"]),
                           "rejected": st.sampled_from(["images/0.png", "images/1.png", "images/2.png"])},
                          optional={"prompt": st.text(max_size=10), "class": st.integers(-2, 12),
                                    "promt": st.text(max_size=3), "meta": st.integers()}),
    st.text(max_size=12), st.integers()), max_size=6)


@given(lines=PAIR_LINES, raw=st.binary(max_size=40))
def test_pairs_files_are_read_or_refused_with_file_and_line(tmp_path_factory, lines, raw):
    from diffusionlab.data.pairs import load_pairs

    root = tmp_path_factory.mktemp("pairs")
    (root / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(root / "images" / f"{i}.png")
    body = "\n".join(json.dumps(x) for x in lines).encode() + (b"\n" + raw if raw else b"")
    (root / "pairs.jsonl").write_bytes(body)
    _count("pairs.jsonl")
    try:
        load_pairs(root, (1, 8, 8))
    except UserError as e:
        assert "pairs.jsonl" in str(e) or "pair" in str(e), e


# ------------------------------------------------------------------ .npy inputs
ARRAYS = st.one_of(
    st.tuples(st.sampled_from(["float32", "float64", "float16", "int8", "uint8", "bool", "complex64"]),
              st.lists(st.integers(0, 5), min_size=0, max_size=5),
              st.sampled_from([0.0, 0.5, 1.0, 2.0, float("nan"), float("inf")])),
    st.just(("object", [2], 0.0)), st.just(("str", [3], 0.0)))


@given(spec=ARRAYS)
def test_npy_arrays_are_read_or_refused(tmp_path_factory, spec):
    dtype, shape, fill = spec
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    if dtype == "object":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif dtype == "str":
        np.save(path, np.array(["a", "b", "c"]))
    else:
        a = np.full(shape, 0.5, dtype=np.float64)
        if a.size:
            a.flat[0] = fill
        with np.errstate(invalid="ignore"):
            np.save(path, a.astype(dtype))
    _count(f"npy:{dtype}")
    try:
        x = read_image_array(path)
    except UserError as e:
        assert str(path) in str(e)
        return
    assert x.ndim == 4 and x.shape[1] in (1, 3) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_a_pickled_array_is_refused_not_loaded(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="pickled Python objects, which are never loaded"):
        read_image_array(path)


@given(data=st.binary(max_size=200))
def test_any_bytes_named_npy_are_refused(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("npyb") / "x.npy"
    path.write_bytes(data)
    _count("npy:bytes")
    with pytest.raises(UserError):
        read_image_array(path)


# ------------------------------------------------------------------ command-line values
BAD_TRAIN = {"--steps": ["0", "-3"], "--batch-size": ["0", "-1"], "--time-budget": ["0", "-1", "nan", "inf"],
             "--lr": ["0", "-1e-3", "nan", "inf"], "--grad-accum": ["0"], "--image-size": ["7", "0"],
             "--ema-decay": ["1", "2", "-0.5", "nan"], "--warmup-steps": ["-1"], "--p-uncond": ["1.5", "-0.1", "nan"],
             "--eval-n": ["0", "1"], "--threads": ["0"], "--seed": ["-1"], "--grad-clip": ["0", "nan"],
             "--guide-at": ["0", "1", "2"], "--checkpoint-every": ["-1"], "--sample-steps": ["0"],
             "--on-nan": ["maybe"], "--on-write-error": ["ignore"], "--preset": ["nosuch"], "--process": ["nosuch"]}


@given(flag=st.sampled_from(sorted(BAD_TRAIN)), pick=st.integers(0, 3))
def test_out_of_range_train_values_are_refused_before_any_work(tmp_path_factory, capsys, flag, pick):
    from diffusionlab.apps.cli import main

    value = BAD_TRAIN[flag][pick % len(BAD_TRAIN[flag])]
    out = tmp_path_factory.mktemp("args") / "run"
    _count("args:train")
    rc = main(["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--out", str(out),
               "--no-progress", flag, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert flag in err or flag.lstrip("-").replace("-", "_") in err, err
    assert not out.exists()  # nothing written


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from diffusionlab.training import Trainer
    from diffusionlab.training.config import tiny_config

    out = tmp_path_factory.mktemp("tiny") / "run"
    Trainer(config=tiny_config(data="digits", image_size=8, max_steps=2, out_dir=str(out), num_threads=1)).train()
    return out


BAD_SAMPLE = {"--steps": ["0", "-2"], "--n": ["0", "-1"], "--seed": ["-1"], "--batch-size": ["0"],
              "--sampler": ["nosuch"], "--schedule": ["bogus"], "--guidance": ["nan", "2"]}


@given(flag=st.sampled_from(sorted(BAD_SAMPLE)), pick=st.integers(0, 3))
def test_out_of_range_sample_values_are_refused(tmp_path_factory, capsys, tiny_run, flag, pick):
    from diffusionlab.apps.cli import main

    value = BAD_SAMPLE[flag][pick % len(BAD_SAMPLE[flag])]
    out = tmp_path_factory.mktemp("sample") / "x.png"
    _count("args:sample")
    rc = main(["sample", "--ckpt", str(tiny_run), "--n", "2", "--out", str(out), flag, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not out.exists()


# ------------------------------------------------------------------ checkpoints: configs, manifests, bytes
JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10 ** 6) | st.floats(allow_nan=True) |
                    st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                    max_leaves=6)


def _ck_copy(tiny_run, tmp_path_factory) -> Path:
    import shutil

    from diffusionlab.models.checkpoint import find_checkpoint

    dst = tmp_path_factory.mktemp("ck") / "run"
    shutil.copytree(tiny_run, dst)
    return find_checkpoint(dst)


@given(path=st.lists(st.sampled_from(["model", "diffusion", "train", "sampling", "arch", "format_version", "dim",
                                      "objective", "timesteps", "process", "channels", "dim_mults", "conditioning"]),
                     min_size=1, max_size=3),
       value=JSON, file=st.sampled_from(["config.json", "manifest.json"]))
def test_a_fuzzed_config_or_manifest_is_a_clear_error(tmp_path_factory, tiny_run, path, value, file):
    """A config.json / manifest.json with any key set to any JSON value loads, or fails as a
    CheckpointError / UserError (exit 2) - never another exception."""
    from diffusionlab.models.checkpoint import CheckpointError
    from diffusionlab.models.loading import load_denoiser

    ck = _ck_copy(tiny_run, tmp_path_factory)
    cfg = json.loads((ck / file).read_text())
    node = cfg
    for key in path[:-1]:
        if not isinstance(node.get(key) if isinstance(node, dict) else None, dict):
            break
        node = node[key]
    if isinstance(node, dict):
        node[path[-1]] = value
    (ck / file).write_text(json.dumps(cfg))
    _count(f"checkpoint:{file}")
    with contextlib.suppress(CheckpointError, UserError):  # refused cleanly, or loaded: both fine; nothing else is
        load_denoiser(ck)


@given(offset=st.integers(0, 10 ** 6), byte=st.integers(0, 255),
       file=st.sampled_from(["model.safetensors", "ema.safetensors", "config.json"]))
def test_corrupted_checkpoint_bytes_are_found(tmp_path_factory, tiny_run, offset, byte, file):
    from diffusionlab.models.checkpoint import CheckpointError
    from diffusionlab.models.loading import load_denoiser

    ck = _ck_copy(tiny_run, tmp_path_factory)
    data = bytearray((ck / file).read_bytes())
    i = offset % len(data)
    if data[i] == byte:
        return
    data[i] = byte
    (ck / file).write_bytes(bytes(data))
    _count(f"checkpoint:bytes:{file}")
    with pytest.raises(CheckpointError, match="damaged|manifest|sha256|checksum"):
        load_denoiser(ck)


def test_a_pickle_checkpoint_is_refused(tmp_path):
    """A torch.save pickle handed as a checkpoint is refused, never unpickled."""
    from diffusionlab.models.checkpoint import CheckpointError
    from diffusionlab.models.loading import load_denoiser

    path = tmp_path / "model-10.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_denoiser(path)


def test_cases_tried(capsys):
    """The count of fuzz cases per kind this session (shown with -s)."""
    with capsys.disabled():
        print("\nfuzz cases tried:", json.dumps(dict(sorted(COUNTS.items()))))
