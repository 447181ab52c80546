"""LoRA fine-tuning through peft (models.lora, training.finetune, `finetune`, `lora merge`,
`--lora`): the adapted model equals the base at initialisation and at weight 0, merging equals
the unmerged forward and unmerging restores the base, adapters load onto a fresh base (also by
peft's own PeftModel.from_pretrained), weighted adapters add their weight deltas, the base's
files never change, a wrong base is refused, and a killed LoRA run resumes exactly."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from diffusionlab.apps.cli import main  # noqa: E402
from diffusionlab.data.datasets import load_image_sets  # noqa: E402
from diffusionlab.errors import UserError  # noqa: E402
from diffusionlab.models.checkpoint import CheckpointError  # noqa: E402
from diffusionlab.models.loading import load_denoiser, read_checkpoint  # noqa: E402
from diffusionlab.models.lora import LoraRef, attach, attach_new, read_adapter  # noqa: E402
from diffusionlab.nn import NETWORKS, DiTConfig  # noqa: E402
from diffusionlab.nn.lora_targets import LORA_TARGETS, lora_target_modules  # noqa: E402
from diffusionlab.training import Trainer, tiny_config  # noqa: E402
from diffusionlab.training.config import default_model  # noqa: E402
from diffusionlab.training.finetune import finetune_config  # noqa: E402

SMALL = dict(data="digits", image_size=8)
NETS = {"unet": default_model(dim=8, dim_mults=(1, 2), mid_attn=True, groups=4, patch_size=1, attn_heads=2,
                              attn_dim_head=4),
        "dit": DiTConfig(channels=1, hidden=16, depth=1, heads=2, patch_size=2)}


def _base(root: Path, arch: str = "unet", **kw) -> Path:
    out = root / f"base-{arch}"
    cfg = tiny_config(out_dir=str(out), arch=arch, model=NETS[arch], cond="class", p_uncond=0.3, **SMALL, **kw)
    Trainer(config=cfg).train()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional base, and two LoRA runs on it (threes; fives with another seed)."""
    root = tmp_path_factory.mktemp("lora")
    base = _base(root)
    before = _hashes(base)
    loras = {}
    for name, digit, seed in (("three", 3, 0), ("five", 5, 1)):
        cfg = finetune_config(str(base), digits=(digit,), max_steps=4, out_dir=str(root / name), batch_size=8,
                              progress=False, checkpoint_every=2, seed=seed, lr=3e-2, warmup_steps=1)
        Trainer(config=cfg).train()
        loras[name] = root / name
    return {"root": root, "base": base, "before": before, **loras}


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _x(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.tensor([0.3, 2.0, 20.0][:n])


def _out(den, x, sigma, labels=(3, 5, 1)):
    from diffusionlab.core.cond import Cond

    with torch.no_grad():
        return den(x, sigma, Cond(labels=torch.tensor(labels[:len(x)])))


# ------------------------------------------------------------------ identity at start and at 0

@pytest.mark.parametrize("arch", sorted(NETWORKS))
@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_a_fresh_adapter_leaves_every_network_unchanged(arch, targets):
    from diffusionlab.nn import build_network

    torch.manual_seed(0)
    net = build_network(arch, dataclasses.replace(NETS[arch], num_classes=10)).eval()
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    from diffusionlab.core.cond import Cond

    cond = Cond(labels=torch.tensor([1, 2]))
    with torch.no_grad():
        before = net(x, sigma, cond)
    n_params = sum(p.numel() for p in net.parameters())
    names = set(lora_target_modules(net, targets))
    attach_new(net, 2, 2.0, targets, seed=0)
    with torch.no_grad():
        after = net(x, sigma, cond)
    assert torch.equal(before, after)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) < 0.5 * n_params
    assert {n.rsplit(".lora_", 1)[0] for n in trainable} == names


def test_targets_nest_and_attn_is_the_attention_layers():
    from diffusionlab.nn import build_network

    for arch in NETWORKS:
        net = build_network(arch, NETS[arch])
        sets = [set(lora_target_modules(net, t)) for t in LORA_TARGETS]
        assert sets[0] < sets[1] < sets[2]
    unet = build_network("unet", NETS["unet"])
    assert all(n.rsplit(".", 1)[-1] in ("qkv", "out", "q", "kv") for n in lora_target_modules(unet, "attn"))
    with pytest.raises(UserError, match="targets"):
        lora_target_modules(unet, "convs")


def test_weight_zero_is_the_base_bitwise_and_training_moved_the_adapter(runs):
    base = load_denoiser(runs["base"])
    x, sigma = _x()
    ref = _out(base, x, sigma)
    for lora in ([str(runs["three"]) + ":0"], [str(runs["three"]), str(runs["five"])]):
        scale = 0.0 if len(lora) == 2 else 1.0
        den = load_denoiser(runs["base"], lora=lora, lora_scale=scale)
        assert torch.equal(_out(den, x, sigma), ref)
    moved = _out(load_denoiser(runs["base"], lora=[str(runs["three"])]), x, sigma)
    assert (moved - ref).abs().max() > 1e-4


# ------------------------------------------------------------------ files, loading, the base

def test_the_adapter_folder_is_peft_layout_and_loads_onto_a_fresh_base(runs):
    from peft import PeftModel

    folder = runs["three"]
    assert {"adapter_model.safetensors", "adapter_config.json", "lora.json"} <= {p.name for p in folder.iterdir()}
    rec = read_adapter(folder)
    assert rec.rank == 4 and rec.alpha == 4.0 and rec.targets == "attn+conv" and rec.step == 4
    assert Path(rec.base).resolve() == runs["base"].resolve()
    ours = load_denoiser(runs["base"], lora=[str(folder)])
    fresh = read_checkpoint(runs["base"])
    PeftModel.from_pretrained(fresh.network, str(folder))  # peft's own loader on a fresh copy of the base
    theirs = fresh.spec.denoiser(fresh.network, fresh.process, None, fresh.declared()).eval()
    x, sigma = _x()
    assert torch.equal(_out(ours, x, sigma), _out(theirs, x, sigma))
    # the top-level adapter is the EMA of the last checkpoint
    from safetensors.torch import load_file

    ema = load_file(folder / "checkpoints" / "step-00000004" / "ema.safetensors")
    top = load_file(folder / "adapter_model.safetensors")
    assert len(top) == len(ema)
    for k, v in ema.items():
        key = "base_model.model." + k.replace(".default.", ".")
        assert torch.equal(top[key], v), k


def test_the_base_is_unchanged_and_only_the_adapter_is_small(runs):
    assert _hashes(runs["base"]) == runs["before"]
    size = (runs["three"] / "adapter_model.safetensors").stat().st_size
    step = read_checkpoint(runs["base"]).provenance.path
    assert size < (Path(step) / "ema.safetensors").stat().st_size


def test_a_wrong_base_is_refused_naming_both_hashes_unless_forced(runs, tmp_path, capsys):
    other = _base(tmp_path, seed=7)
    with pytest.raises(CheckpointError) as e:
        load_denoiser(other, lora=[str(runs["three"])])
    assert read_adapter(runs["three"]).base_sha256[:16] in str(e.value)
    rc = main(["sample", "--ckpt", str(other), "--lora", str(runs["three"]), "--n", "2", "--steps", "2",
               "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "--force" in err and not (tmp_path / "s.png").exists()
    assert main(["sample", "--ckpt", str(other), "--lora", str(runs["three"]), "--force", "--n", "2",
                 "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0


def test_a_lora_run_is_not_a_model_and_its_damaged_adapter_is_named(runs, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(runs["three"]), "--n", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "--lora" in capsys.readouterr().err
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(runs["three"], bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        load_denoiser(runs["base"], lora=[str(bad)])
    with pytest.raises(CheckpointError, match="not a LoRA adapter"):
        load_denoiser(runs["base"], lora=[str(runs["base"])])


@pytest.mark.parametrize("text,path,weight", [("a/b", "a/b", 1.0), ("a/b:0.5", "a/b", 0.5),
                                              ("C:/x:y:-1", "C:/x:y", -1.0), ("C:/runs/x", "C:/runs/x", 1.0),
                                              ("x:1e-1", "x", 0.1)])
def test_lora_weights_are_read_from_the_right(text, path, weight):
    assert LoraRef.parse(text) == LoraRef(path, weight)


def test_a_non_finite_weight_is_refused():
    with pytest.raises(UserError, match="finite"):
        LoraRef.parse("a:nan")


# ------------------------------------------------------------------ merge, unmerge, stacking

def test_two_weighted_adapters_add_their_weight_deltas(runs):
    w = {"three": 0.7, "five": -0.4}
    loras = [f"{runs[k]}:{v}" for k, v in w.items()]
    rec = read_checkpoint(runs["base"])
    base_sd = {k: v.clone() for k, v in rec.network.state_dict().items()}
    both = attach(rec.network, [LoraRef.parse(s) for s in loras])
    deltas = {}
    for k in w:  # each adapter's own merged delta at weight 1
        r = read_checkpoint(runs["base"])
        merged = attach(r.network, [LoraRef(str(runs[k]))]).merged_network().state_dict()
        deltas[k] = {n: merged[n] - base_sd[n] for n in base_sd}
    merged = both.merged_network().state_dict()
    for n in base_sd:
        torch.testing.assert_close(merged[n], base_sd[n] + sum(w[k] * deltas[k][n] for k in w), rtol=1e-5,
                                   atol=1e-6)


def test_merge_equals_the_unmerged_forward_and_unmerge_restores_the_base(runs, tmp_path):
    x, sigma = _x()
    lora = [f"{runs['three']}:0.8", f"{runs['five']}:0.5"]
    unmerged = load_denoiser(runs["base"], lora=lora)
    assert main(["lora", "merge", "--ckpt", str(runs["base"]), "--lora", lora[0], "--lora", lora[1],
                 "--out", str(tmp_path / "merged")]) == 0
    merged = load_denoiser(tmp_path / "merged")
    torch.testing.assert_close(_out(merged, x, sigma), _out(unmerged, x, sigma), rtol=1e-5, atol=1e-5)
    config = json.loads((Path(read_checkpoint(tmp_path / "merged").provenance.path) / "config.json").read_text())
    assert config["merged"]["base_sha256"] == read_adapter(runs["three"]).base_sha256
    # merging in place and unmerging gives the base weights back
    rec = read_checkpoint(runs["base"])
    base_sd = {k: v.clone() for k, v in rec.network.state_dict().items()}
    ad = attach(rec.network, [LoraRef.parse(s) for s in lora])
    ad.merge()
    ad.unmerge()
    for k, v in rec.network.state_dict().items():
        if k in base_sd:
            torch.testing.assert_close(v, base_sd[k], rtol=0, atol=1e-6)
    assert main(["lora", "merge", "--ckpt", str(runs["base"]), "--lora", lora[0],
                 "--out", str(tmp_path / "merged")]) == 2  # an existing checkpoint is not replaced silently


# ------------------------------------------------------------------ training: resume, data, flags

def test_a_killed_lora_run_resumes_to_the_uninterrupted_result(runs, tmp_path):
    kw = dict(digits=(3,), max_steps=6, batch_size=8, progress=False, checkpoint_every=2, lr=3e-2, warmup_steps=1)
    Trainer(config=finetune_config(str(runs["base"]), out_dir=str(tmp_path / "a"), **kw)).train()
    first = Trainer(config=finetune_config(str(runs["base"]), out_dir=str(tmp_path / "b"), **kw))
    first.train(stop_after=3)  # stopped at step 3 (checkpoints 2 and 3) ...
    ck3 = tmp_path / "b" / "checkpoints" / "step-00000003" / "model.safetensors"
    ck3.write_bytes(ck3.read_bytes()[:100])  # ... and killed while writing step 3: resume falls back to 2
    second = Trainer(config=finetune_config(str(runs["base"]), out_dir=str(tmp_path / "b"), **kw), resume=True)
    assert second.step == 2 and second.opt.state  # adapters, their EMA and the optimizer state are back
    second.train()
    from safetensors.torch import load_file

    for name in ("model", "ema"):
        a = load_file(tmp_path / "a" / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        b = load_file(tmp_path / "b" / "checkpoints" / "step-00000006" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all("lora_" in k for k in a)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "b" / "adapter_model.safetensors").read_bytes()


def test_finetune_cli_full_baseline_and_refusals(runs, tmp_path, capsys):
    common = ["--ckpt", str(runs["base"]), "--digits", "3", "--steps", "2", "--batch-size", "8", "--no-progress"]
    assert main(["finetune", *common, "--full", "--out", str(tmp_path / "full")]) == 0
    rec = read_checkpoint(tmp_path / "full")  # an ordinary checkpoint, all weights moved
    base = read_checkpoint(runs["base"])
    assert rec.train["finetune"]["full"] and rec.train["digits"] == [3] and rec.train["p_uncond"] == 0.3
    changed = [k for k, v in rec.network.state_dict().items() if not torch.equal(v, base.network.state_dict()[k])]
    assert len(changed) > len(list(base.network.state_dict())) // 2
    assert main(["finetune", *common, "--out", str(runs["base"])]) == 2  # never into the base's run
    assert "base" in capsys.readouterr().err
    no_steps = [a for i, a in enumerate(common) if a != "--steps" and common[i - 1] != "--steps"]
    assert main(["finetune", *no_steps, "--out", str(tmp_path / "x")]) == 2  # --steps or --time-budget
    assert main(["finetune", *common, "--lora-rank", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--lora-rank" in capsys.readouterr().err
    assert main(["finetune", *common, "--out", str(runs["three"])]) == 2  # holds a run: resume or overwrite
    assert _hashes(runs["base"]) == runs["before"]


def test_digits_select_classes_of_any_data_command(tmp_path):
    train, val = load_image_sets("digits", 8, 1, classes=(3, 5))
    assert set(train.labels.tolist()) == {3, 5} and set(val.labels.tolist()) == {3, 5}
    with pytest.raises(UserError, match="classes 0..9"):
        load_image_sets("digits", 8, 1, classes=(12,))
    assert main(["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--digits", "3,5",
                 "--steps", "1", "--no-progress", "--out", str(tmp_path / "t")]) == 0
    assert read_checkpoint(tmp_path / "t").train["digits"] == [3, 5]


def test_pipelines_and_eval_take_lora(runs, tmp_path):
    np.save(tmp_path / "in.npy", np.zeros((2, 1, 8, 8), np.float32))
    lora = ["--lora", f"{runs['three']}:0.5"]
    assert main(["img2img", "--ckpt", str(runs["base"]), *lora, "--input", str(tmp_path / "in.npy"), "--strength",
                 "0.5", "--steps", "4", "--out", str(tmp_path / "i.png")]) == 0
    for k, lo in enumerate(([], lora)):
        assert main(["eval", "--ckpt", str(runs["base"]), *lo, "--nll", "vlb", "--vlb-t", "2", "--n", "4",
                     "--digits", "3", "--json", str(tmp_path / f"m{k}.json")]) == 0
    bpd = [json.loads((tmp_path / f"m{k}.json").read_text())["bits_per_dim"] for k in range(2)]
    assert bpd[0] != bpd[1]  # the adapter changed the model that was measured


@pytest.mark.parametrize("kind", ["dit", "latent"])
def test_finetune_and_sample_a_dit_and_a_latent_base(kind, tmp_path):
    small = ["--data", "digits", "--image-size", "8", "--no-progress"]
    base = ["train", "--preset", "tiny", *small, "--cond", "class", "--steps", "2", "--out", str(tmp_path / "base")]
    if kind == "dit":
        base += ["--arch", "dit", "--hidden", "16", "--depth", "1", "--heads", "2", "--patch-size", "2"]
    else:
        assert main(["train-autoencoder", "--out", str(tmp_path / "ae"), "--dim", "8", "--steps", "2",
                     "--batch-size", "8", *small]) == 0
        base += ["--latent", str(tmp_path / "ae")]
    assert main(base) == 0
    assert main(["finetune", "--ckpt", str(tmp_path / "base"), "--no-progress", "--digits", "3", "--steps", "2",
                 "--batch-size", "8", "--lr", "0.03", "--out", str(tmp_path / "lora")]) == 0
    outs = {}
    for scale in ("0", "1"):
        assert main(["sample", "--ckpt", str(tmp_path / "base"), "--lora", str(tmp_path / "lora"), "--lora-scale",
                     scale, "--n", "2", "--steps", "3", "--out", str(tmp_path / f"s{scale}.png"),
                     "--npy", str(tmp_path / f"s{scale}.npy")]) == 0
        outs[scale] = np.load(tmp_path / f"s{scale}.npy")
    assert main(["sample", "--ckpt", str(tmp_path / "base"), "--n", "2", "--steps", "3",
                 "--out", str(tmp_path / "b.png"), "--npy", str(tmp_path / "b.npy")]) == 0
    assert outs["0"].shape == (2, 1, 8, 8)  # pixels, also for the latent model
    assert np.array_equal(outs["0"], np.load(tmp_path / "b.npy")) and not np.array_equal(outs["1"], outs["0"])
