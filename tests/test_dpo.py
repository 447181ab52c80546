"""Diffusion-DPO (core.losses.DPOLoss, data.pairs, training.dpo, `dpo`, `make-pairs`): the loss is the
Diffusion-DPO authors' formula, its gradient at the reference is (beta / 4)(grad L_w - grad L_l), a
few steps lower the chosen image's denoising loss and raise the rejected one's relative to the
reference, beta = 0 trains nothing, the reference stays frozen and is never saved, a run logs its
reward accuracy and margin, the pairs reader names the file, line and reason of every bad line, and
make-pairs writes pairs that its own reader accepts."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("peft")

from diffusionlab.apps.cli import main  # noqa: E402
from diffusionlab.core.cond import Batch, Cond  # noqa: E402
from diffusionlab.core.losses import DiscreteLoss, DPOLoss  # noqa: E402
from diffusionlab.core.protocol import call_net  # noqa: E402
from diffusionlab.core.schedules import DiscreteSchedule  # noqa: E402
from diffusionlab.data.datasets import load_image_sets  # noqa: E402
from diffusionlab.data.folder import export_pngs  # noqa: E402
from diffusionlab.data.pairs import PAIRS_FILE, load_pairs, read_pairs_file, write_pairs  # noqa: E402
from diffusionlab.errors import UserError  # noqa: E402
from diffusionlab.models.loading import load_denoiser  # noqa: E402
from diffusionlab.training import Trainer, tiny_config  # noqa: E402
from diffusionlab.training.config import default_model  # noqa: E402
from diffusionlab.training.dpo import AdaptersOff, dpo_config, pair_sets  # noqa: E402
from diffusionlab.training.finetune import base_network  # noqa: E402

T = 100
NET = default_model(dim=8, dim_mults=(1, 2), mid_attn=True, groups=4, patch_size=1, attn_heads=2, attn_dim_head=4)


# ------------------------------------------------------------------ small networks and helpers

class TinyEps(nn.Module):
    """A plain ``net(x, t)`` (no condition): two convolutions and a timestep embedding."""

    def __init__(self, seed: int, hidden: int = 8):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the weights depend on the seed only
            torch.manual_seed(seed)
            self.a = nn.Conv2d(1, hidden, 3, padding=1)
            self.emb = nn.Linear(1, hidden)
            self.b = nn.Conv2d(hidden, hidden, 3, padding=1)
            self.out = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, x, t):
        h = torch.tanh(self.a(x) + self.emb(t.float()[:, None] / T)[:, :, None, None])
        return self.out(torch.tanh(self.b(h)))


def _eps_loss():
    return DiscreteLoss(DiscreteSchedule.from_name("linear", T), objective="eps")


def _grads(net) -> list:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _safetensors_keys(path: Path) -> set:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def _latest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


# ------------------------------------------------------------------ the trained fixtures

@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the models are tiny, and on a shared 2-core machine two threads mostly wait."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pairs_folder(folder: Path, n: int = 24) -> Path:
    """Digit-3 images chosen over digit-5 images; two of three pairs under class 3, the rest
    unconditional."""
    tr, _ = load_image_sets("digits", 8, 1)
    threes, fives = tr.images[tr.labels == 3][:n], tr.images[tr.labels == 5][:n]
    chosen, rejected = export_pngs(threes, folder / "images", 0), export_pngs(fives, folder / "images", 1000)
    write_pairs(folder, [{"chosen": c.relative_to(folder).as_posix(), "rejected": r.relative_to(folder).as_posix(),
                          **({"class": 3} if i % 3 else {})} for i, (c, r) in enumerate(zip(chosen, rejected))])
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional base on 8x8 digits, a pairs folder, and a LoRA and a full DPO run
    of 4 steps on it (the trainers are kept to look inside)."""
    root = tmp_path_factory.mktemp("dpo")
    base = root / "base"
    Trainer(config=tiny_config(out_dir=str(base), model=NET, cond="class", p_uncond=0.3, data="digits",
                               image_size=8, num_threads=1)).train()
    before = _hashes(base)
    pairs = _pairs_folder(root / "pairs")
    trainers = {}
    for name, full in (("lora", False), ("full", True)):
        cfg = dpo_config(str(base), str(pairs), beta=1000.0, full=full, max_steps=4, out_dir=str(root / name),
                         batch_size=8, progress=False, checkpoint_every=2, val_every=2, log_every=1,
                         lr=1e-2 if full else 3e-2, warmup_steps=1, num_threads=1)
        trainers[name] = Trainer(config=cfg)
        trainers[name].train()
    return {"root": root, "base": base, "pairs": pairs, "before": before, "lora": root / "lora",
            "full": root / "full", "trainers": trainers}


# ------------------------------------------------------------------ 1. the authors' formula

def test_loss_is_the_reference_implementations_formula():
    """DPOLoss == a line-by-line transcription of Diffusion-DPO's train.py for a DDPM eps model:
    shared t and noise for both images, eps-MSE per sample, -logsigmoid(-beta/2 (model_diff - ref_diff))."""
    torch.manual_seed(0)
    B, beta = 6, 50.0
    model, ref = TinyEps(seed=1), TinyEps(seed=2)
    x_w, x_l = torch.rand(B, 1, 8, 8) * 2 - 1, torch.rand(B, 1, 8, 8) * 2 - 1
    t = torch.randint(0, T, (B,))
    noise = torch.randn(B, 1, 8, 8)

    dpo = DPOLoss(_eps_loss(), ref, beta)
    got = dpo(model, torch.cat([x_w, x_l], dim=1), t=t, eps=noise)

    # --- the transcription (train.py of Wallace et al., DDPM noise_scheduler.add_noise) ---
    abar = DiscreteSchedule.from_name("linear", T).abar.float()
    a = abar[t][:, None, None, None]
    latents = torch.cat([x_w, x_l])
    noise2 = noise.repeat(2, 1, 1, 1)
    timesteps = t.repeat(2)
    noisy = a.repeat(2, 1, 1, 1).sqrt() * latents + (1 - a.repeat(2, 1, 1, 1)).sqrt() * noise2
    model_pred = model(noisy, timesteps.float())
    model_losses = (model_pred.float() - noise2.float()).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad():
        ref_pred = ref(noisy, timesteps.float())
        ref_losses = (ref_pred.float() - noise2.float()).pow(2).mean(dim=[1, 2, 3])
        ref_losses_w, ref_losses_l = ref_losses.chunk(2)
        ref_diff = ref_losses_w - ref_losses_l
    inside_term = -0.5 * beta * (model_diff - ref_diff)
    want = -1 * F.logsigmoid(inside_term)

    assert got.shape == (B,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    s = dpo.stats
    torch.testing.assert_close(s["reward_margin"], inside_term.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(s["reward_accuracy"], (s["reward_margin"] > 0).float())
    torch.testing.assert_close(s["model_loss"], 0.5 * (model_losses_w + model_losses_l).detach(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s["reference_loss"], 0.5 * (ref_losses_w + ref_losses_l), rtol=1e-5, atol=1e-6)
    # the margins are not all of one sign here: the comparison is not of a saturated loss
    assert 0 < int((inside_term > 0).sum()) < B and bool((want > 1e-3).all())

    # a Batch carries the same pairs; the gradient reaches the model only, never the reference
    again = dpo(model, Batch(torch.cat([x_w, x_l], dim=1)), t=t, eps=noise)
    torch.testing.assert_close(again, got)
    again.sum().backward()
    assert all(p.grad is None for p in ref.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_odd_channel_count_and_bad_beta_are_refused():
    ref = TinyEps(seed=2)
    with pytest.raises(UserError, match="channel"):
        DPOLoss(_eps_loss(), ref, 1.0)(TinyEps(seed=1), torch.zeros(2, 3, 8, 8))
    for beta in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="beta"):
            DPOLoss(_eps_loss(), ref, beta)


# ------------------------------------------------------------------ 2. the gradient at the reference

def test_gradient_at_the_reference_is_beta_over_four_times_the_difference_of_gradients():
    """model == reference: inside = 0 and sigmoid(0) = 1/2, so
    grad(-logsigmoid(inside)) = (beta / 4)(grad L_w - grad L_l) at the same draw."""
    torch.manual_seed(3)
    B, beta = 4, 37.0
    model = TinyEps(seed=5)
    ref = copy.deepcopy(model).requires_grad_(False)
    x_w, x_l = torch.rand(B, 1, 8, 8) * 2 - 1, torch.rand(B, 1, 8, 8) * 2 - 1
    t, noise = torch.randint(0, T, (B,)), torch.randn(B, 1, 8, 8)
    dpo = DPOLoss(_eps_loss(), ref, beta)

    loss = dpo(model, torch.cat([x_w, x_l], dim=1), t=t, eps=noise)
    assert torch.equal(dpo.stats["reward_margin"], torch.zeros(B))
    torch.testing.assert_close(loss, torch.full((B,), float(np.log(2.0))))
    model.zero_grad()
    loss.sum().backward()
    dpo_grad = _flat(_grads(model))

    plain = _eps_loss()
    model.zero_grad()
    plain(model, x_w, t=t, eps=noise, train=False).sum().backward()
    g_w = _flat(_grads(model))
    model.zero_grad()
    plain(model, x_l, t=t, eps=noise, train=False).sum().backward()
    g_l = _flat(_grads(model))

    want = beta / 4 * (g_w - g_l)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(dpo_grad, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ 3. the direction of an update

def test_a_few_steps_lower_the_chosen_elbo_and_raise_the_rejected_one():
    """One pair, a smooth ramp chosen over a checkerboard. The reference: a denoiser fitted to both
    images on a fixed set of draws (one noise per timestep: a Monte-Carlo estimate of each image's
    ELBO, up to constants). A few SGD steps of DPO with fresh random draws then lower the chosen
    image's loss on those draws below the reference's and raise the rejected one's (at a joint
    optimum grad L_w = -grad L_l, so the update direction -(grad L_w - grad L_l) lowers L_w and
    raises L_l; from a reference far from it, DPO only promises that L_w - L_l falls, and both may
    move together: Diffusion-DPO's "likelihood displacement")."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    x_w = (0.8 * xx)[None, None]
    x_l = 0.8 * (((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2) * 2 - 1.0)[None, None]
    plain = _eps_loss()
    t_fixed = torch.arange(T)
    eps_fixed = torch.randn(T, 1, 8, 8, generator=torch.Generator().manual_seed(123))

    def elbo(m, x):
        return plain(m, x.expand(T, -1, -1, -1), t=t_fixed, eps=eps_fixed, train=False).mean()

    net = TinyEps(seed=0, hidden=16)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(50):
        loss = elbo(net, x_w) + elbo(net, x_l)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref = copy.deepcopy(net).requires_grad_(False)
    with torch.no_grad():
        ref_w, ref_l = elbo(ref, x_w).item(), elbo(ref, x_l).item()

    dpo = DPOLoss(plain, ref, beta=100.0)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    pair = torch.cat([x_w, x_l], dim=1).expand(32, -1, -1, -1)
    losses = []
    for _ in range(5):
        loss = dpo(net, pair, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        d_w, d_l = elbo(net, x_w).item() - ref_w, elbo(net, x_l).item() - ref_l
    assert d_w < -1e-3 and d_l > 1e-3, (d_w, d_l)
    assert losses[0] == pytest.approx(np.log(2.0)) and losses[-1] < losses[0]


# ------------------------------------------------------------------ 4. beta -> 0

def test_beta_zero_gives_exactly_zero_gradient_and_a_small_beta_a_proportional_one():
    torch.manual_seed(7)
    B = 4
    model, ref = TinyEps(seed=1), TinyEps(seed=2)  # the model differs from the reference
    pair = torch.rand(B, 2, 8, 8) * 2 - 1
    t, noise = torch.randint(0, T, (B,)), torch.randn(B, 1, 8, 8)

    def grad(beta):
        model.zero_grad()
        DPOLoss(_eps_loss(), ref, beta)(model, pair, t=t, eps=noise).sum().backward()
        return _flat(_grads(model))

    zero = grad(0.0)
    assert torch.equal(zero, torch.zeros_like(zero))
    dpo = DPOLoss(_eps_loss(), ref, 0.0)
    out = dpo(model, pair, t=t, eps=noise)
    torch.testing.assert_close(out, torch.full((B,), float(np.log(2.0))))  # no preference at all
    assert torch.equal(dpo.stats["reward_margin"], torch.zeros(B))

    small, double = grad(1e-4), grad(2e-4)
    assert small.abs().max() > 0
    torch.testing.assert_close(double, 2 * small, rtol=1e-3, atol=1e-12)


def test_a_dpo_run_refuses_a_beta_that_is_not_positive(runs, tmp_path):
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="beta"):
            dpo_config(str(runs["base"]), str(runs["pairs"]), beta=beta, max_steps=2, out_dir=str(tmp_path / "x"))
    rc = main(["dpo", "--ckpt", str(runs["base"]), "--pairs", str(runs["pairs"]), "--beta", "0", "--steps", "2",
               "--no-progress", "--out", str(tmp_path / "zero")])
    assert rc == 2
    assert not (tmp_path / "zero" / "checkpoints").exists()


# ------------------------------------------------------------------ 5. the frozen, unsaved reference

def test_the_base_files_never_change(runs):
    assert _hashes(runs["base"]) == runs["before"]


def test_a_lora_run_saves_only_adapters_and_keeps_the_base_weights(runs):
    run, trainer = runs["lora"], runs["trainers"]["lora"]
    for ck in sorted((run / "checkpoints").glob("step-*")):
        for name in ("model.safetensors", "ema.safetensors"):
            keys = _safetensors_keys(ck / name)
            assert keys and all("lora_" in k for k in keys), (ck, name, sorted(keys)[:5])
    assert all("lora_" in k for k in _safetensors_keys(run / "adapter_model.safetensors"))

    base = base_network(trainer.cfg).state_dict()
    seen = 0
    for name, value in trainer.model.state_dict().items():
        if "lora_" in name:
            continue
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(value.cpu(), base[plain]), name
        seen += 1
    assert seen == len(base)
    # the adapters did train (B started at 0)
    assert any(v.abs().max() > 0 for k, v in trainer.model.state_dict().items() if "lora_B" in k)


def test_adapters_off_is_exactly_the_base_and_restores_requires_grad(runs):
    trainer = runs["trainers"]["lora"]
    adapters, net = trainer.adapters, trainer.model
    device = next(net.parameters()).device
    base = base_network(trainer.cfg).eval().to(device)
    if trainer.channels_last:  # laid out as the run's network, so the same kernels run
        base.to(memory_format=torch.channels_last)
    net.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=g).to(device)
    t = torch.tensor([3.0, 40.0, 90.0], device=device)
    cond = Cond(labels=torch.tensor([3, 5, 0], device=device),
                null=torch.tensor([False, False, True], device=device))
    try:
        with torch.no_grad():
            off = AdaptersOff(adapters)(x, t, cond)
            want = call_net(base, x, t, cond)
            on = call_net(net, x, t, cond)
        torch.testing.assert_close(off, want, rtol=0, atol=0)
        assert (on - want).abs().max() > 1e-6  # with the adapters on, it is not the base

        lora = [p for n, p in net.named_parameters() if "lora_" in n]
        assert lora and all(p.requires_grad for p in lora)
        with adapters.disabled():
            pass
        assert all(p.requires_grad for p in lora)
        lora[0].requires_grad_(False)  # "as before": a frozen one stays frozen
        with adapters.disabled():
            pass
        assert not lora[0].requires_grad and all(p.requires_grad for p in lora[1:])
    finally:
        for n, p in net.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
        net.train()


def test_a_full_run_saves_the_network_only_and_its_reference_stays_the_base(runs):
    run, trainer = runs["full"], runs["trainers"]["full"]
    net_keys = set(trainer.model.state_dict())
    base_keys = _safetensors_keys(_latest(runs["base"]) / "model.safetensors")
    for ck in sorted((run / "checkpoints").glob("step-*")):
        for name in ("model.safetensors", "ema.safetensors"):
            assert _safetensors_keys(ck / name) == net_keys == base_keys, (ck, name)
        assert not list(ck.glob("*ref*"))

    base = base_network(trainer.cfg).state_dict()
    reference = trainer.loss_fn.reference
    assert reference is not trainer.model
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    ref_state = reference.state_dict()
    assert set(ref_state) == set(base)
    assert all(torch.equal(ref_state[k].cpu(), base[k]) for k in base)
    # the trained network did move away from the base
    assert any(not torch.equal(v.cpu(), base[k]) for k, v in trainer.model.state_dict().items())


# ------------------------------------------------------------------ 6. what a run writes

@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_run_logs_its_rewards_and_loads(runs, kind):
    run = runs[kind]
    recs = _records(run)
    train = [r for r in recs if "reward_accuracy" in r]
    val = [r for r in recs if "val_reward_accuracy" in r]
    assert train and val
    assert all(0.0 <= r["reward_accuracy"] <= 1.0 and np.isfinite(r["reward_margin"]) for r in train)
    assert all(0.0 <= r["val_reward_accuracy"] <= 1.0 and "val_reward_margin" in r for r in val)
    assert (run / "loss.png").stat().st_size > 0

    den = load_denoiser(runs["base"], lora=(str(run),)) if kind == "lora" else load_denoiser(run)
    plain = load_denoiser(runs["base"])
    x, sigma = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5, 5.0])
    cond = Cond(labels=torch.tensor([3, 5]))
    with torch.no_grad():
        out, ref = den(x, sigma, cond), plain(x, sigma, cond)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert (out - ref).abs().max() > 0  # the aligned model is not the base


# ------------------------------------------------------------------ 7. the pairs reader

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with four 8x8 images a.png..d.png and a 10x10 big.png; each test copies it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pair-images")
    g = np.random.default_rng(0)
    for name in "abcd":
        Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"{name}.png")
    Image.fromarray(g.integers(0, 256, (10, 10), dtype=np.uint8)).save(root / "big.png")
    return root


def _folder(tmp_path: Path, images: Path, text: str) -> Path:
    import shutil

    folder = tmp_path / "pairs"
    shutil.copytree(images, folder)
    (folder / PAIRS_FILE).write_text(text)
    return folder


GOOD = '{"chosen": "a.png", "rejected": "b.png"}\n'
BAD_LINES = {
    "bad json": ('{"chosen": "a.png", "rejected": ', "not JSON"),
    "not an object": ('["a.png", "b.png"]', "one JSON object"),
    "missing chosen": ('{"rejected": "b.png"}', "missing 'chosen'"),
    "unknown key": ('{"chosen": "c.png", "rejected": "d.png", "promt": "a 3"}', "unknown key(s) 'promt'"),
    "duplicate": (GOOD.strip(), "repeats the pair of line 1"),
    "reversed": ('{"chosen": "b.png", "rejected": "a.png"}', "reverses the pair of line 1"),
    "same image": ('{"chosen": "c.png", "rejected": "c.png"}', "the same image"),
    "outside": ('{"chosen": "../x.png", "rejected": "c.png"}', "not inside the pairs folder"),
    "absolute": ('{"chosen": "/etc/passwd", "rejected": "c.png"}', "not inside the pairs folder"),
    "empty path": ('{"chosen": "", "rejected": "c.png"}', "is an image path"),
    "prompt and class": ('{"chosen": "c.png", "rejected": "d.png", "prompt": "x", "class": 3}', "not both"),
    "bad class": ('{"chosen": "c.png", "rejected": "d.png", "class": 1.5}', "class index or name"),
}
BAD_IMAGES = {
    "missing image": ('{"chosen": "c.png", "rejected": "nothere.png"}',
                      "rejected image 'nothere.png' does not exist"),
    "wrong size": ('{"chosen": "big.png", "rejected": "c.png"}', "is 10x10, the model's images are 8x8"),
    "not an image": ('{"chosen": "pairs.jsonl", "rejected": "c.png"}', "not a readable image"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_is_refused_with_file_line_and_reason(tmp_path, images, case):
    line, reason = BAD_LINES[case]
    folder = _folder(tmp_path, images, GOOD + "\n" + line + "\n")  # a blank line 2 is skipped: the bad one is 3
    with pytest.raises(UserError) as e:
        read_pairs_file(folder)
    msg = str(e.value)
    assert e.value.param == "pairs"
    assert f"{folder / PAIRS_FILE}:3: " in msg and reason in msg, msg
    with pytest.raises(UserError, match=":3: "):  # and load_pairs stops on it too
        load_pairs(folder, (1, 8, 8))


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_with_file_line_and_reason(tmp_path, images, case):
    line, reason = BAD_IMAGES[case]
    folder = _folder(tmp_path, images, GOOD + line + "\n")
    assert len(read_pairs_file(folder)) == 2  # the lines are fine; the images are not
    with pytest.raises(UserError) as e:
        load_pairs(folder, (1, 8, 8))
    msg = str(e.value)
    assert e.value.param == "pairs" and f"{folder / PAIRS_FILE}:2: " in msg and reason in msg, msg


def test_every_problem_is_reported_at_once(tmp_path, images):
    folder = _folder(tmp_path, images, GOOD + BAD_LINES["bad json"][0] + "\n" + BAD_LINES["reversed"][0] + "\n")
    with pytest.raises(UserError) as e:
        read_pairs_file(folder)
    msg = str(e.value)
    assert "2 problems" in msg and ":2: not JSON" in msg and ":3: reverses" in msg


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_pairs_file_is_refused(tmp_path, images, text):
    folder = _folder(tmp_path, images, text)
    with pytest.raises(UserError, match="holds no pairs") as e:
        read_pairs_file(folder)
    assert str(folder / PAIRS_FILE) in str(e.value)


def test_a_missing_folder_or_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_pairs_file(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=PAIRS_FILE):
        read_pairs_file(tmp_path / "empty")


def test_a_good_file_loads(tmp_path, images):
    text = (GOOD + '{"chosen": "c.png", "rejected": "d.png", "class": 3, "meta": {"why": "clearer"}}\n'
            '{"chosen": "a.png", "rejected": "b.png", "class": 3}\n')  # the same images under another condition
    folder = _folder(tmp_path, images, text)
    ps = load_pairs(folder, (1, 8, 8))
    assert ps.chosen.shape == ps.rejected.shape == (3, 1, 8, 8)
    assert ps.chosen.min() >= -1 and ps.chosen.max() <= 1
    assert ps.classes == [None, 3, 3] and ps.prompts == [None, None, None]
    from PIL import Image

    a = torch.from_numpy(np.asarray(Image.open(folder / "a.png"), dtype=np.float32)) / 127.5 - 1
    torch.testing.assert_close(ps.chosen[0, 0], a)
    with pytest.raises(ValueError):  # the writer refuses a misspelt key too
        write_pairs(tmp_path, [{"chosen": "a.png", "rejected": "b.png", "promt": "x"}])


def _dpo_cfg(runs, pairs: Path, out: Path):
    return dpo_config(str(runs["base"]), str(pairs), beta=100.0, max_steps=2, out_dir=str(out), batch_size=1,
                      progress=False, num_threads=1)


def test_a_condition_the_base_does_not_take_is_refused(runs, tmp_path, images):
    ok = _folder(tmp_path / "ok", images, GOOD + '{"chosen": "c.png", "rejected": "d.png", "class": "3"}\n')
    train, val = pair_sets(_dpo_cfg(runs, ok, tmp_path / "r0"), 1)
    assert train.images.shape[1:] == (2, 8, 8)
    assert sorted(torch.cat([train.labels, val.labels]).unique().tolist()) in ([-1, 3], [3], [-1])

    prompt = _folder(tmp_path / "prompt", images,
                     GOOD + '{"chosen": "c.png", "rejected": "d.png", "prompt": "a 3"}\n')
    with pytest.raises(UserError, match="pairs.jsonl:2: a prompt, but the base is class-conditional"):
        pair_sets(_dpo_cfg(runs, prompt, tmp_path / "r1"), 1)
    for klass in (12, -1, "seven"):
        bad = _folder(tmp_path / f"class{klass}", images,
                      GOOD + json.dumps({"chosen": "c.png", "rejected": "d.png", "class": klass}) + "\n")
        with pytest.raises(UserError, match=f"pairs.jsonl:2: {klass!r} is not a class of the base"):
            pair_sets(_dpo_cfg(runs, bad, tmp_path / f"r-{klass}"), 1)
        with pytest.raises(UserError, match="is not a class of the base"):
            Trainer(config=_dpo_cfg(runs, bad, tmp_path / f"t-{klass}"))
        assert not (tmp_path / f"t-{klass}" / "checkpoints").exists()


def test_the_cli_refuses_a_bad_pairs_file_before_any_checkpoint(runs, tmp_path, images, capsys):
    bad = _folder(tmp_path, images, GOOD + BAD_LINES["unknown key"][0] + "\n")
    out = tmp_path / "run"
    rc = main(["dpo", "--ckpt", str(runs["base"]), "--pairs", str(bad), "--steps", "2", "--no-progress",
               "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{bad / PAIRS_FILE}:2:" in err and "promt" in err
    assert not (out / "checkpoints").exists() and not (out / "adapter_model.safetensors").exists()
    assert _hashes(runs["base"]) == runs["before"]


# ------------------------------------------------------------------ 8. make-pairs

REWARD = '''
import torch

def brightness(images, conditions):
    assert images.min() >= 0 and images.max() <= 1
    return images.mean(dim=(1, 2, 3))
'''


def _png(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0)


def test_make_pairs_with_a_user_reward(runs, tmp_path):
    reward = tmp_path / "my_reward.py"
    reward.write_text(REWARD)
    out = tmp_path / "made"
    margin = 1e-3
    common = ["make-pairs", "--ckpt", str(runs["base"]), "--reward", f"{reward}:brightness", "--class", "3",
              "--steps", "2", "--batch-size", "4"]
    assert main([*common, "--n", "3", "--margin", str(margin), "--out", str(out)]) == 0
    pairs = read_pairs_file(out)
    assert len(pairs) == 3 and all(p.class_ == "3" for p in pairs)
    lines = [json.loads(line) for line in (out / PAIRS_FILE).read_text().splitlines()]
    for p, line in zip(pairs, lines):
        meta = line["meta"]
        assert meta["chosen_score"] > meta["rejected_score"] + margin
        # the scores are the reward of the images written (up to the PNG's 8-bit rounding)
        assert _png(out / p.chosen).mean().item() == pytest.approx(meta["chosen_score"], abs=5e-3)
        assert _png(out / p.rejected).mean().item() == pytest.approx(meta["rejected_score"], abs=5e-3)
    assert load_pairs(out, (1, 8, 8)).chosen.shape == (3, 1, 8, 8)

    assert main([*common, "--n", "3", "--out", str(out)]) == 2  # holds pairs: --overwrite or another --out

    none = tmp_path / "none"
    assert main([*common, "--n", "2", "--margin", "1e9", "--max-samples", "4", "--out", str(none)]) == 2
    assert none.is_dir() and not list(none.rglob("*.png"))  # the folder is kept, with no pairs in it
    with pytest.raises(UserError, match="holds no pairs"):
        read_pairs_file(none)


@pytest.fixture(scope="module")
def base16(tmp_path_factory):
    """A tiny class-conditional base on 16x16 digits (the digit classifier reads at least 16x16)."""
    out = tmp_path_factory.mktemp("base16") / "base"
    Trainer(config=tiny_config(out_dir=str(out), model=NET, cond="class", p_uncond=0.3, data="digits",
                               image_size=16, max_steps=2, checkpoint_every=2, val_every=2, num_threads=1)).train()
    return out


def test_make_pairs_with_digit_confidence(base16, tmp_path, monkeypatch):
    """The built-in reward: the digit classifier's probability of the requested class (a seeded,
    untrained classifier stands in for the cached one to keep the test fast)."""
    import diffusionlab.evaluation.digits as digits_mod
    from diffusionlab.evaluation.digit_net import DigitClassifier

    torch.manual_seed(0)
    clf = DigitClassifier().eval()
    with torch.no_grad():  # sharper logits around p(3) = 1/2: scores spread wider than all near 0.1
        for p in clf.head.parameters():
            p.mul_(3.0)
        clf.head.bias[3] += 2.7
    monkeypatch.setattr(digits_mod, "load_digit_classifier", lambda *a, **k: clf)
    out = tmp_path / "digits"
    assert main(["make-pairs", "--ckpt", str(base16), "--reward", "digit-confidence", "--class", "3", "--n", "2",
                 "--margin", "0.01", "--steps", "2", "--batch-size", "4", "--out", str(out)]) == 0
    pairs = read_pairs_file(out)
    assert len(pairs) == 2
    for p, line in zip(pairs, (json.loads(s) for s in (out / PAIRS_FILE).read_text().splitlines())):
        meta = line["meta"]
        assert meta["reward"] == "digit-confidence" and meta["target"] == {"class": "3"}
        assert meta["chosen_score"] > meta["rejected_score"] + 0.01
        with torch.no_grad():
            probs = clf.predict_proba(torch.stack([_png(out / p.chosen), _png(out / p.rejected)])[:, None] * 2 - 1)
        assert probs[0, 3].item() == pytest.approx(meta["chosen_score"], abs=5e-3)
        assert probs[1, 3].item() == pytest.approx(meta["rejected_score"], abs=5e-3)

    # a class that is not a digit is refused before anything is sampled
    assert main(["make-pairs", "--ckpt", str(base16), "--reward", "digit-confidence", "--class", "12", "--n", "1",
                 "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "twelve")]) == 2
    assert not (tmp_path / "twelve").exists()



def test_digit_confidence_refuses_images_too_small_for_its_classifier(runs, tmp_path, monkeypatch, capsys):
    import diffusionlab.evaluation.digits as digits_mod
    from diffusionlab.evaluation.digit_net import DigitClassifier

    monkeypatch.setattr(digits_mod, "load_digit_classifier", lambda *a, **k: DigitClassifier().eval())
    out = tmp_path / "small"
    assert main(["make-pairs", "--ckpt", str(runs["base"]), "--reward", "digit-confidence", "--class", "3",
                 "--n", "1", "--steps", "2", "--batch-size", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--reward: digit-confidence scores greyscale digits of at least 16x16" in err and "1x8x8" in err
    assert not list(tmp_path.rglob("*.png"))


# ------------------------------------------------------------------ resume through the command line

def test_a_dpo_run_stopped_and_resumed_ends_where_an_uninterrupted_one_does(runs, tmp_path):
    """`dpo --resume` continues a LoRA DPO run exactly: 2 steps, then resumed to 4, gives the
    adapter of 4 uninterrupted steps (same pairs, draws keyed by (seed, step, index))."""
    common = ["dpo", "--ckpt", str(runs["base"]), "--pairs", str(runs["pairs"]), "--batch-size", "8",
              "--checkpoint-every", "2", "--lr", "3e-2", "--warmup-steps", "1", "--no-progress", "--threads", "1"]
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "a")]) == 0
    cfg = dpo_config(str(runs["base"]), str(runs["pairs"]), max_steps=4, out_dir=str(tmp_path / "b"), batch_size=8,
                     checkpoint_every=2, lr=3e-2, warmup_steps=1, progress=False, num_threads=1)
    Trainer(config=cfg).train(stop_after=2)
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (_safetensors_keys(tmp_path / r / "adapter_model.safetensors") for r in "ab")
    assert a == b
    from safetensors.torch import load_file

    ta, tb = (load_file(str(tmp_path / r / "adapter_model.safetensors")) for r in "ab")
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "b" / "lora.json").read_text())["step"] == 4
