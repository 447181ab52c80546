"""The command line end to end, and its error messages."""
import json

import numpy as np
import pytest
from PIL import Image

from diffusionlab.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--preset", "tiny", "--out", str(out), "--steps", "3", "--no-progress"])
    assert rc == 0
    return out


def test_train_writes_a_loadable_run(run_dir):
    assert (run_dir / "checkpoints" / "latest").is_file()
    assert json.loads((run_dir / "run.json").read_text())["summary"]["steps"] == 3


def test_resume_continues(run_dir, tmp_path):
    import shutil
    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    assert main(["train", "--preset", "tiny", "--out", str(d), "--steps", "5", "--resume", "--no-progress"]) == 0
    assert json.loads((d / "run.json").read_text())["summary"]["steps"] == 5


@pytest.mark.parametrize("sampler,extra", [("ddim", ["--eta", "0.5"]), ("ddpm", ["--variance", "large"]),
                                           ("ddim", ["--schedule", "karras"]),
                                           ("unipc", ["--schedule", "tuned", "--opt", "order=2", "--opt", "variant=bh1"]),
                                           ("heun", ["--schedule", "karras", "--sigma-max", "20", "--opt", "s_churn=10"])])
def test_sample_writes_grid_gif_and_npy(run_dir, tmp_path, sampler, extra):
    out = tmp_path / "s.png"
    rc = main(["sample", "--ckpt", str(run_dir), "--n", "5", "--steps", "4", "--sampler", sampler,
               "--out", str(out), "--gif", str(tmp_path / "d.gif"), "--npy", str(tmp_path / "x.npy"), *extra])
    assert rc == 0 and out.is_file() and (tmp_path / "d.gif").is_file()
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (5, 1, 32, 32)


def test_noise_strip(tmp_path):
    assert main(["noise", "--image", "mnist", "--size", "32", "--out", str(tmp_path / "n.png")]) == 0
    assert main(["noise", "--image", "cat", "--size", "64", "--t", "0,100,199", "--out", str(tmp_path / "c.png")]) == 0
    img = Image.open(tmp_path / "c.png")
    assert img.size[0] > img.size[1]


def test_eval_on_images(tmp_path, capsys):
    from diffusionlab.data import load_mnist
    np.save(tmp_path / "real.npy", load_mnist("heldout")[:200].numpy())
    assert main(["eval", "--images", str(tmp_path / "real.npy"), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["confident_fraction"] > 0.8 and m["n"] == 200


def test_samplers_lists_registry(capsys):
    from diffusionlab.samplers import SAMPLERS
    assert main(["samplers", "-v"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SAMPLERS) and "knobs: order=3, variant='bh2'" in out


@pytest.mark.parametrize("argv,msg", [
    (["train", "--preset", "tiny", "--data", "/no/such/folder"], "neither an embedded dataset"),
    (["sample", "--ckpt", "/no/such/run"], "no such checkpoint"),
    (["sample", "--ckpt", "RUN", "--sampler", "nope"], "unknown sampler"),
    (["sample", "--ckpt", "RUN", "--eta", "0.5", "--sampler", "ddpm"], "--eta applies"),
    (["sample", "--ckpt", "RUN", "--sampler", "unipc", "--opt", "foo=1"], "has no knob"),
    (["sample", "--ckpt", "RUN", "--sampler", "unipc", "--opt", "order"], "KEY=VALUE"),
    (["noise", "--image", "/no/such.png"], "no such image"),
    (["noise", "--t", "0,5000"], "outside"),
    (["eval"], "exactly one of"),
])
def test_user_errors_are_one_line_with_a_hint(argv, msg, capsys, run_dir):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "hint:" in err and "Traceback" not in err


def test_file_given_as_data_folder(tmp_path, capsys):
    f = tmp_path / "img.png"
    Image.new("RGB", (40, 40)).save(f)
    assert main(["train", "--preset", "tiny", "--data", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "is a file" in capsys.readouterr().err
