"""The noise-aware classifier of classifier guidance trains on the project's one trainer
(``training.classifier``): its loss draws from the per-sample generators, its run writes the
trainer's checkpoint (manifest, format version, kind "classifier"), resume is exact,
``load_classifier`` reads it back (and the older classifier.json folders), and the CLI trains
it and guides a diffusion model with it. Everything at 8x8 on the digits, a few steps."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusionlab.apps.cli import main
from diffusionlab.core.cond import Batch, Cond
from diffusionlab.core.rng import per_sample_generators
from diffusionlab.errors import UserError
from diffusionlab.models.checkpoint import FORMAT_VERSION, CheckpointError, find_checkpoint, read_config, verify_checkpoint
from diffusionlab.nn.classifier import NoisyClassifier
from diffusionlab.training import Trainer, tiny_config
from diffusionlab.training.classifier import (NoisyClassifierLoss, classifier_config, classifier_summary,
                                              load_classifier, train_classifier)
from diffusionlab.training.config import ClassifierObjective

SMALL = dict(data="digits", image_size=8, batch_size=16, dim=8, num_threads=1)


def tensors(run, name):
    return load_file(str(find_checkpoint(run) / f"{name}.safetensors"))


def test_the_loss_draws_each_sample_from_its_own_generator():
    net = NoisyClassifier(channels=1, num_classes=3, dim=8)
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = Batch(x0, Cond(labels=torch.tensor([0, 1, 2, 1])))
    loss = NoisyClassifierLoss(0.01, 50.0)
    gens = lambda idx: per_sample_generators(3, idx, "train", 0, "loss")  # noqa: E731
    state = torch.get_rng_state()
    whole = loss(net, batch, generator=gens(range(4)))
    halves = torch.cat([loss(net, Batch(x0[:2], batch.cond[:2]), generator=gens(range(2))),
                        loss(net, Batch(x0[2:], batch.cond[2:]), generator=gens(range(2, 4)))])
    assert whole.shape == (4,) and torch.allclose(whole, halves, atol=1e-6)   # the same at any batch size
    assert torch.equal(torch.get_rng_state(), state)                            # the global RNG untouched
    sigma, x = loss.draw(x0, gens(range(4)))
    assert ((sigma >= 0.01) & (sigma <= 50.0)).all()
    assert torch.equal(loss.draw(x0, gens(range(4)))[1], x)                     # fixed by the generators
    with pytest.raises(UserError, match="labelled"):
        loss(net, Batch(x0, Cond()), generator=gens(range(4)))
    with pytest.raises(UserError, match="sigma_min < sigma_max"):
        NoisyClassifierLoss(1.0, 0.5)


def test_a_classifier_run_is_a_trainer_checkpoint_and_loads_back(tmp_path):
    state = torch.get_rng_state()
    out = tmp_path / "cls"
    res = train_classifier(out=str(out), steps=3, sigma_min=0.01, sigma_max=80.0, **SMALL)
    assert torch.equal(torch.get_rng_state(), state)                            # no global RNG in this path
    assert res["steps"] == 3 and res["status"] == "completed" and set(res["heldout_accuracy_at_sigma"]) == \
        {"0.05", "0.5", "1", "2", "5"}
    ck = find_checkpoint(out)
    assert ck == out / "checkpoints" / "step-00000003" and (out / "checkpoints" / "latest").is_file()
    assert (ck / "manifest.json").is_file()
    verify_checkpoint(ck)
    cfg = read_config(out)
    assert cfg["format_version"] == FORMAT_VERSION and cfg["kind"] == "classifier"
    assert cfg["network"]["arch"] == "classifier" and cfg["network"]["config"]["num_classes"] == 10
    assert cfg["classifier"] == {"sigma_min": 0.01, "sigma_max": 80.0, "num_classes": 10,
                                 "class_names": [str(k) for k in range(10)]}
    assert cfg["train"]["classifier"] == {"sigma_min": 0.01, "sigma_max": 80.0} and cfg["image_size"] == [8, 8]
    assert not (out / "samples").exists()                                       # no grids for a classifier
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any("val_loss" in r for r in recs) and recs[-1]["heldout_accuracy_at_sigma"] == res["heldout_accuracy_at_sigma"]
    assert classifier_summary(out)["heldout_accuracy_at_sigma"] == res["heldout_accuracy_at_sigma"]

    net = load_classifier(out)
    assert isinstance(net, NoisyClassifier) and not net.training
    assert net.num_classes == 10 and net.class_names == tuple(str(k) for k in range(10))
    ema = tensors(out, "ema")
    assert all(torch.equal(v, ema[k]) for k, v in net.state_dict().items())    # the EMA weights
    again = load_classifier(ck)                                                 # a step folder loads too
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net(x, torch.tensor([0.5, 3.0])), again(x, torch.tensor([0.5, 3.0])))


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_continues_a_classifier_run_exactly(tmp_path, one_thread, grad_accum):
    kw = dict(SMALL, grad_accum=grad_accum)
    train_classifier(out=str(tmp_path / "a"), steps=4, **kw)
    assert train_classifier(out=str(tmp_path / "b"), steps=2, **kw)["steps"] == 2
    res = train_classifier(out=str(tmp_path / "b"), steps=4, resume=True, **kw)
    assert res["steps"] == 4
    for name in ("model", "ema", "train_state"):
        a, b = tensors(tmp_path / "a", name), tensors(tmp_path / "b", name)
        assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items()), name
    # the Trainer itself: a simulated Ctrl-C after step 2, then resume
    cfg = classifier_config(out=str(tmp_path / "c"), steps=4, **kw)
    assert Trainer(config=cfg).train(stop_after=2)["status"] == "interrupted"
    c = Trainer(config=cfg, resume=True)
    assert c.step == 2 and c.is_classifier and c.cfg.classifier == ClassifierObjective()
    c.train()
    a = tensors(tmp_path / "a", "model")
    assert all(torch.equal(v.cpu(), a[k]) for k, v in c.model.state_dict().items())


def write_old_format(folder, net, **meta):
    """A classifier folder as train_classifier wrote it before classifiers were trainer runs."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "classifier.safetensors"))
    body = {"config": net.config, "sigma_min": 0.002, "sigma_max": 80.0, "class_names": net.config["class_names"],
            "steps": 7, "seconds": 1.5, "data": "digits", "image_size": 8, "final_loss": 2.0,
            "heldout_accuracy_at_sigma": {"0.05": 0.5}, **meta}
    (folder / "classifier.json").write_text(json.dumps(body, indent=2))


def test_the_older_classifier_format_still_loads(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        old = NoisyClassifier(channels=1, num_classes=3, dim=8, class_names=("cat", "dog", "owl"))
    write_old_format(tmp_path / "old", old)
    net = load_classifier(tmp_path / "old")
    assert not net.training and net.num_classes == 3 and net.class_names == ("cat", "dog", "owl")
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in net.state_dict().items())
    assert classifier_summary(tmp_path / "old")["steps"] == 7
    # a new run does not silently mix with an old folder
    with pytest.raises(UserError, match="already holds a classifier"):
        train_classifier(out=str(tmp_path / "old"), steps=1, **SMALL)
    train_classifier(out=str(tmp_path / "old"), steps=1, overwrite=True, **SMALL)
    assert not (tmp_path / "old" / "classifier.json").exists() and load_classifier(tmp_path / "old").num_classes == 10
    # damaged old folders name the file
    write_old_format(tmp_path / "broken", old)
    (tmp_path / "broken" / "classifier.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="classifier.safetensors"):
        load_classifier(tmp_path / "broken")


def test_bad_paths_and_configs_are_user_errors(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nowhere")):
        load_classifier(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        load_classifier(tmp_path / "empty")
    # a diffusion run is no classifier, and a classifier run is no diffusion model
    Trainer(config=tiny_config(data="digits", image_size=8, out_dir=str(tmp_path / "dm"), max_steps=1,
                               val_every=0, checkpoint_every=0, num_threads=1)).train()
    with pytest.raises(CheckpointError, match="not a noise-aware classifier"):
        load_classifier(tmp_path / "dm")
    train_classifier(out=str(tmp_path / "cls"), steps=1, **SMALL)
    from diffusionlab.models.loading import load_denoiser

    with pytest.raises(CheckpointError, match="holds a noise-aware classifier"):
        load_denoiser(tmp_path / "cls")
    # the classifier task checks its config before loading anything
    for bad, param in ((dict(p_uncond=0.1), "p_uncond"), (dict(arch="unet"), "arch"), (dict(cond="text"), "cond"),
                       (dict(classifier=ClassifierObjective(2.0, 1.0)), "sigma_min"),
                       (dict(guide_at=0.3), "guide_at")):
        with pytest.raises(UserError) as e:
            Trainer(config=classifier_config(out=str(tmp_path / "x"), steps=1, **SMALL, **bad))
        assert e.value.param == param, bad
    with pytest.raises(UserError) as e:
        Trainer(config=tiny_config(arch="classifier", model=classifier_config().model, out_dir=str(tmp_path / "y")))
    assert e.value.param == "arch"
    with pytest.raises(UserError, match="steps or a time budget"):
        train_classifier(out=str(tmp_path / "z"), steps=None, **SMALL)


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm8")
    assert main(["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--steps", "2",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    return out


def test_the_train_classifier_command_end_to_end(diffusion_run, tmp_path, capsys):
    cls = tmp_path / "cls"
    base = ["train-classifier", "--data", "digits", "--batch-size", "16", "--out", str(cls)]
    assert main([*base, "--ckpt", str(diffusion_run), "--steps", "2"]) == 0     # 8x8 and the model's sigma range
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 2 and set(printed) == {"steps", "seconds", "heldout_accuracy_at_sigma"}
    assert read_config(cls)["kind"] == "classifier" and read_config(cls)["image_size"] == [8, 8]
    first = tensors(cls, "model")
    assert main([*base, "--image-size", "8", "--steps", "1"]) == 2                # an existing run: no overwrite
    assert "already holds a training run" in capsys.readouterr().err
    assert all(torch.equal(v, tensors(cls, "model")[k]) for k, v in first.items())  # nothing was written
    assert main([*base, "--image-size", "8", "--steps", "3", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert main([*base, "--image-size", "8", "--steps", "1", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert main(["train-classifier", "--data", "digits", "--out", str(tmp_path / "n"), "--steps", "1",
                 "--resume", "--overwrite"]) == 2

    # classifier guidance with the loaded classifier, trained now or of the older format
    sample = ["sample", "--ckpt", str(diffusion_run), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]
    assert main([*sample, "--npy", str(tmp_path / "plain.npy")]) == 0
    assert main([*sample, "--classifier", str(cls), "--class", "3", "--classifier-scale", "5",
                 "--npy", str(tmp_path / "guided.npy")]) == 0
    assert np.abs(np.load(tmp_path / "guided.npy") - np.load(tmp_path / "plain.npy")).max() > 1e-5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        old = NoisyClassifier(channels=1, num_classes=10, dim=8, class_names=tuple(str(k) for k in range(10)))
    write_old_format(tmp_path / "old", old)
    assert main([*sample, "--classifier", str(tmp_path / "old"), "--class", "7"]) == 0
    capsys.readouterr()
    assert main([*sample, "--classifier", str(tmp_path / "missing"), "--class", "3"]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
