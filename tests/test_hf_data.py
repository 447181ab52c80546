"""Hugging Face datasets on disk as training data (``data.hf``): ``hf:`` (save_to_disk),
``parquet:`` and ``imagefolder:`` give the same tensors, labels, captions and split as the plain
folder of the same pictures; the images stay lazy (decoded only when indexed); bad input is a
``UserError`` naming its parameter; a class-conditional run trains and resumes exactly."""
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

datasets = pytest.importorskip("datasets")

from diffusionlab.apps.cli import main  # noqa: E402
from diffusionlab.data import folder, hf  # noqa: E402
from diffusionlab.data.datasets import load_dataset, load_image_sets, split_sets  # noqa: E402
from diffusionlab.errors import UserError  # noqa: E402

N = 24
NAMES = ["cat", "dog", "fox"]
SIZE = 8


def _picture(i: int) -> Image.Image:
    """Picture i: seeded noise of a size and mode that exercise the conversion (resize, crop,
    greyscale and transparency to RGB)."""
    g = np.random.default_rng(i)
    w, h = (10 + i % 5, 9 + i % 4)
    if i % 6 == 1:
        return Image.fromarray(g.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if i % 6 == 2:
        return Image.fromarray(g.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 24 pictures, labels and captions as a plain folder (labels.csv, captions.jsonl), a
    save_to_disk folder, a parquet file and an imagefolder folder (metadata.csv)."""
    root = tmp_path_factory.mktemp("hfdata")
    plain, imf = root / "plain", root / "imagefolder"
    plain.mkdir()
    imf.mkdir()
    files = [f"{i:03d}.png" for i in range(N)]
    labels = [i % 3 for i in range(N)]
    captions = [f"picture {i} of a {NAMES[i % 3]}" for i in range(N)]
    for i, name in enumerate(files):
        _picture(i).save(plain / name)
        shutil.copy(plain / name, imf / name)
    with open(plain / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *[(n, NAMES[k]) for n, k in zip(files, labels)]])
    with open(plain / "captions.jsonl", "w") as f:
        f.writelines(json.dumps({"file": n, "caption": c}) + "\n" for n, c in zip(files, captions))
    with open(imf / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file_name", "label", "text"),
                                 *[(n, NAMES[k], c) for n, k, c in zip(files, labels, captions)]])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
                                  "text": datasets.Value("string"), "score": datasets.Value("float32")})
    ds = datasets.Dataset.from_dict({"image": [str(plain / n) for n in files], "label": labels, "text": captions,
                                     "score": [float(i) for i in range(N)]}, features=features)
    datasets.disable_progress_bars()
    ds.save_to_disk(str(root / "saved"))
    ds.to_parquet(str(root / "data.parquet"))
    datasets.enable_progress_bars()
    return {"root": root, "folder": str(plain), "hf": f"hf:{root / 'saved'}",
            "parquet": f"parquet:{root / 'data.parquet'}", "imagefolder": f"imagefolder:{imf}"}


@pytest.fixture(scope="module")
def folder_sets(sources):
    return load_image_sets(sources["folder"], SIZE, 3, val_fraction=0.25, seed=3)


@pytest.mark.parametrize("kind", ["hf", "parquet", "imagefolder"])
def test_every_spelling_gives_the_folders_tensors_labels_captions_and_split(kind, sources, folder_sets):
    train, val = load_image_sets(sources[kind], SIZE, 3, val_fraction=0.25, seed=3)
    assert isinstance(train.images, hf.LazyImages) and isinstance(val.images, hf.LazyImages)
    for got, want in zip((train, val), folder_sets):
        assert got.images.shape == want.images.shape == (len(want), 3, SIZE, SIZE)
        assert torch.equal(got.images[:], want.images)  # bit for bit: one conversion
        assert torch.equal(got.labels, want.labels) and got.class_names == want.class_names == NAMES
        assert got.captions == want.captions


def test_the_split_is_the_folders_fixed_seed_rule(sources):
    train, val = load_image_sets(sources["hf"], SIZE, 3, val_fraction=0.25, seed=3)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    assert torch.equal(val.images.rows, order[:6]) and torch.equal(train.images.rows, order[6:])
    small = split_sets(train.subset(range(10)), 0.25, 0)  # under 20 images: one held-out image, also trained on
    assert len(small[0]) == 10 and len(small[1]) == 1


def test_images_are_decoded_only_when_indexed(sources, monkeypatch):
    calls = []
    real = folder.image_tensor
    monkeypatch.setattr(folder, "image_tensor", lambda im, s, c: calls.append(im.size) or real(im, s, c))
    train, val = load_image_sets(sources["hf"], SIZE, 3, val_fraction=0.25, seed=3)
    assert len(calls) == 1  # the first row, as a check of the column
    x = train.images
    assert not [k for k, v in vars(x).items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert len(x) == 18 and x.shape == (18, 3, SIZE, SIZE) and len(calls) == 1
    sub = train.subset([4, 0, 7])
    moved = sub.images.to("cpu")
    assert isinstance(sub.images, hf.LazyImages) and isinstance(moved, hf.LazyImages) and len(calls) == 1
    batch = moved[torch.tensor([2, 0])]
    assert len(calls) == 3 and batch.shape == (2, 3, SIZE, SIZE) and batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack([x[7], x[4]]))
    calls.clear()
    assert x[torch.tensor([5, 5, 1])].shape == (3, 3, SIZE, SIZE) and len(calls) == 2  # a repeated row: once
    assert torch.equal(x[-1], x[17]) and torch.equal(x[1:7:2], x[torch.tensor([1, 3, 5])])
    mask = torch.zeros(18, dtype=torch.bool)
    mask[[2, 9]] = True
    assert torch.equal(x[mask], x[[2, 9]]) and x[torch.tensor([], dtype=torch.long)].shape == (0, 3, SIZE, SIZE)
    with pytest.raises(IndexError):
        x[18]


def test_select_classes_stays_lazy_and_load_dataset_gives_tensors(sources, folder_sets):
    train, _ = load_image_sets(sources["hf"], SIZE, 3, val_fraction=0.25, seed=3, classes=(0, 2))
    assert isinstance(train.images, hf.LazyImages) and set(train.labels.tolist()) == {0, 2}
    assert all(NAMES[k] in c for k, c in zip(train.labels.tolist(), train.captions))
    tr, va = load_dataset(sources["hf"], SIZE, 3, val_fraction=0.25, seed=3)
    assert isinstance(tr, torch.Tensor) and torch.equal(tr, folder_sets[0].images) and torch.equal(va, folder_sets[1].images)


def test_the_builders_cache_under_the_library_cache_offline(sources, monkeypatch):
    before = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    seen, real = [], datasets.load_from_disk
    monkeypatch.setattr(datasets, "load_from_disk", lambda *a, **k: seen.append(
        (os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_HUB_OFFLINE)) or real(*a, **k))
    assert len(hf.open_split(sources["hf"])) == N and seen == [("1", True)]
    ds = hf.open_split(sources["parquet"])
    cache = hf.cache_dir()
    assert str(cache).startswith(os.environ["DIFFUSIONLAB_CACHE"])
    assert ds.cache_files and all(f["filename"].startswith(str(cache)) for f in ds.cache_files)
    assert {k: os.environ.get(k) for k in before} == before  # the offline switch is for the call only
    a = load_image_sets(sources["parquet"], SIZE, 3)[0].images
    assert a.content_key == load_image_sets(sources["parquet"], SIZE, 3)[0].images.content_key
    assert a.content_key != load_image_sets(sources["parquet"], SIZE + 2, 3)[0].images.content_key


@pytest.mark.parametrize("kwargs, param, words", [
    ({"label_column": "nope"}, "label_column", ["'nope'", "image, label, text, score"]),
    ({"caption_column": "nope"}, "caption_column", ["'nope'", "image, label, text, score"]),
    ({"image_column": "nope"}, "image_column", ["'nope'"]),
    ({"image_column": "label"}, "image_column", ["not images"]),
    ({"label_column": "score"}, "label_column", ["not class labels"]),
    ({"caption_column": "label"}, "caption_column", ["not captions"]),
])
def test_column_errors_name_their_parameter(sources, kwargs, param, words):
    with pytest.raises(UserError) as e:
        load_image_sets(sources["hf"], SIZE, 3, **kwargs)
    assert e.value.param == param and all(w in str(e.value) for w in words), str(e.value)


def test_data_errors(sources, tmp_path, monkeypatch):
    cases = [(f"hf:{tmp_path / 'absent'}", "does not exist"), (f"hf:{sources['folder']}", "could not read"),
             ("hf:", "names no path"), (f"imagefolder:{sources['root'] / 'data.parquet'}", "takes a folder")]
    for data, words in cases:
        with pytest.raises(UserError, match=words) as e:
            load_image_sets(data, SIZE, 3)
        assert e.value.param == "data"
    with pytest.raises(UserError, match="names a column of a Hugging Face dataset") as e:
        load_image_sets(sources["folder"], SIZE, 3, label_column="label")
    assert e.value.param == "label_column"
    with pytest.raises(UserError, match="hf:PATH") as e:
        load_image_sets(str(tmp_path / "nowhere"), SIZE, 3)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(UserError) as e:
        load_image_sets(sources["hf"], SIZE, 3)
    assert e.value.param == "data" and "diffusionlab[interop]" in e.value.hint


def _png(i: int) -> bytes:
    import io

    buf = io.BytesIO()
    _picture(i).save(buf, format="PNG")
    return buf.getvalue()


def test_splits_and_undecodable_rows(tmp_path):
    feats = datasets.Features({"image": datasets.Image()})

    def saved(name, rows, splits=None):
        make = lambda r: datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in r]},  # noqa: E731
                                                    features=feats)
        obj = datasets.DatasetDict({k: make(rows) for k in splits}) if splits else make(rows)
        datasets.disable_progress_bars()
        obj.save_to_disk(str(tmp_path / name))
        datasets.enable_progress_bars()
        return f"hf:{tmp_path / name}"

    good = [_png(i) for i in range(4)]
    with pytest.raises(UserError, match="splits a, b and none is named train") as e:
        load_image_sets(saved("two", good, ["a", "b"]), SIZE, 3)
    assert e.value.param == "data" and "hf:" in e.value.hint
    assert len(load_image_sets(saved("one", good, ["test"]), SIZE, 3)[0]) == 4  # the only split
    with pytest.raises(UserError, match="row 0: the image could not be decoded"):  # checked when the set opens
        load_image_sets(saved("bad0", [b"not a picture", *good]), SIZE, 3)
    train, _ = load_image_sets(saved("bad2", [*good[:2], b"\x89PNG broken", *good[2:]]), SIZE, 3)
    assert train.images[:2].shape == (2, 3, SIZE, SIZE)
    with pytest.raises(UserError, match="row 2: the image could not be decoded") as e:  # where it is drawn
        train.images[:]
    assert e.value.param == "data"


def _final(run) -> dict:
    from safetensors.torch import load_file

    ck = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {name: load_file(str(ck / f"{name}.safetensors")) for name in ("model", "ema")}


def test_train_class_conditional_on_a_saved_dataset_and_resume_exactly(sources, tmp_path):
    base = ["train", "--preset", "tiny", "--data", sources["hf"], "--cond", "class", "--label-column", "label",
            "--image-size", str(SIZE), "--lr-schedule", "constant", "--checkpoint-every", "2", "--val-every", "2",
            "--no-progress"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert main([*base, "--out", str(a), "--steps", "4"]) == 0
    assert main([*base, "--out", str(b), "--steps", "2"]) == 0
    assert main([*base, "--out", str(b), "--steps", "4", "--resume"]) == 0
    cfg = json.loads((a / "run.json").read_text())
    assert cfg["summary"]["steps"] == 4
    ck = json.loads((a / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert ck["conditioning"] == {"kind": "class", "num_classes": 3, "class_names": NAMES}
    assert ck["train"]["data"] == sources["hf"] and ck["train"]["label_column"] == "label"
    want, got = _final(a), _final(b)
    for part in ("model", "ema"):
        assert want[part].keys() == got[part].keys()
        for k in want[part]:
            assert torch.equal(want[part][k], got[part][k]), (part, k)
