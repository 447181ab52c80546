"""Bugs found in the 2026-12-05 review of the core, each pinned by a behavioural test that fails
on the code before its fix (the closing note of the core, part 3, lists the failing assertion)."""
import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.cfg import ClassifierFree
from diffusionlab.core.cond import Cond, CondSpec
from diffusionlab.core.protocol import DenoiserInfo
from diffusionlab.core.sampling import sampling_defaults
from diffusionlab.nn.dit import DiT
from diffusionlab.nn.unet import Unet

NETS = {  # every conditional network kind, U-Net and DiT
    "unet-class": (Unet, dict(dim=8, dim_mults=(1, 2), channels=1, num_classes=10, linear_attn=False, mid_attn=False)),
    "dit-class": (DiT, dict(patch_size=4, hidden=32, depth=1, heads=2, channels=1, num_classes=10)),
    "unet-text-small": (Unet, dict(dim=8, dim_mults=(1, 2), channels=1, text_dim=32, text_encoder="small")),
    "dit-text-small": (DiT, dict(patch_size=4, hidden=32, depth=1, heads=2, channels=1, text_dim=32, text_encoder="small")),
    "unet-text-minilm": (Unet, dict(dim=8, dim_mults=(1, 2), channels=1, text_dim=24, text_encoder="minilm")),
    "dit-text-minilm": (DiT, dict(patch_size=4, hidden=32, depth=1, heads=2, channels=1, text_dim=24, text_encoder="minilm")),
    "unet-image": (Unet, dict(dim=8, dim_mults=(1, 2), channels=1, cond_channels=1)),
    "dit-image": (DiT, dict(patch_size=4, hidden=32, depth=1, heads=2, channels=1, cond_channels=1)),
    "unet-vector": (Unet, dict(dim=8, dim_mults=(1, 2), channels=1, cond_dim=5)),
}


def _randomised(name):
    Net, kw = NETS[name]
    torch.manual_seed(0)
    net = Net(**kw).eval()
    for p in net.parameters():  # off the zero init, so the output depends on every embedding
        torch.nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize("name", sorted(NETS))
def test_missing_condition_is_the_null_condition(name):
    """Bug 1: a class network called without labels got no class embedding at all."""
    net = _randomised(name)
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 500.0)
    with torch.no_grad():
        a = net(x, t, Cond())
        b = net(x, t, net.cond_spec.null(3, image_hw=(8, 8)))
    assert torch.equal(a, b)


def test_class_model_without_labels_samples_the_null_model():
    """Bug 1 through the public API: dl.sample(den, shape) on a class model is the null-label model."""
    net = _randomised("unet-class")
    den = dl.DiscreteDenoiser(net, dl.DiscreteSchedule.from_name("linear", 100), "eps")
    a = dl.sample(den, (2, 1, 8, 8), sampler="ddim", steps=3, seed=1)
    b = dl.sample(den, (2, 1, 8, 8), sampler="ddim", steps=3, seed=1, cond=den.info.null_cond(2))
    assert torch.equal(a, b)


def _v(x, sigma, d):  # v = alpha eps - sigma_vp x0 in normalised coordinates; v = -x0 at sigma = inf
    if math.isinf(sigma):
        return -d
    a = 1 / math.sqrt(1 + sigma ** 2)
    return a * (x - d) / sigma - sigma * a * d


class _TwoWay:
    """An exact two-condition denoiser: D_c for labelled samples, D_u for null ones."""

    def __init__(self, d_c, d_u):
        self.d_c, self.d_u = d_c, d_u
        self.info = DenoiserInfo(cond=CondSpec(kind="class", num_classes=2))

    def __call__(self, x, sigma, cond=None):
        null = cond.null_mask(x.shape[0])[:, None, None, None]
        n = x.shape[0] // self.d_c.shape[0]
        return torch.where(null, self.d_u.repeat(n, 1, 1, 1), self.d_c.repeat(n, 1, 1, 1))


@pytest.mark.parametrize("sigma", [0.1, 1.0, 5.0, 30.0, 1000.0, math.inf])
def test_guidance_rescale_phi_1_matches_the_conditional_v_std(sigma):
    """Bug 3: rescale acted on eps (fading out at high sigma, skipped at inf). Lin et al.'s
    Alg. 2 rescales v: with phi = 1 the guided v has the conditional v's per-sample std."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 16, 16, generator=g).clamp(-1, 1) * 0.5
    d_c = x0 + 0.05 * torch.randn(x0.shape, generator=g)
    d_u = 0.6 * x0 + 0.05 * torch.randn(x0.shape, generator=g)
    x = torch.randn(x0.shape, generator=g) if math.isinf(sigma) else x0 + sigma * torch.randn(x0.shape, generator=g)
    den = ClassifierFree(_TwoWay(d_c, d_u), 7.0, rescale=1.0)
    out = den(x, torch.full((4,), sigma), Cond(labels=torch.ones(4, dtype=torch.long)))
    v_out, v_c = _v(x, sigma, out), _v(x, sigma, d_c)
    plain = torch.lerp(d_u, d_c, 7.0)
    assert torch.allclose(v_out.std(dim=(1, 2, 3)), v_c.std(dim=(1, 2, 3)), rtol=1e-4)
    assert not torch.allclose(out, plain, atol=1e-3)  # it does act, at every sigma


def test_guidance_rescale_phi_0_is_plain_cfg():
    g = torch.Generator().manual_seed(1)
    d_c, d_u, x = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(3))
    out = ClassifierFree(_TwoWay(d_c, d_u), 3.0, rescale=0.0)(x, torch.full((2,), 2.0), Cond(labels=torch.ones(2, dtype=torch.long)))
    assert torch.allclose(out, torch.lerp(d_u, d_c, 3.0))


def test_cfg_moves_the_users_condition_to_the_models_device():
    """Bug 5: the null half went to x.device, the user's condition stayed on the CPU."""
    class D:
        info = DenoiserInfo(cond=CondSpec(kind="class", num_classes=3))

        def __call__(self, x, s, c=None):
            assert c.labels.device == x.device
            return x

    x = torch.zeros(2, 1, 4, 4, device="meta")
    out = ClassifierFree(D(), 2.0)(x, torch.ones(2, device="meta"), Cond(labels=torch.tensor([1, 2])))
    assert out.device.type == "meta"


def test_text_unet_without_attention_is_refused():
    """7c: a text U-Net with no attention level silently had no cross-attention."""
    with pytest.raises(ValueError, match="attention"):
        Unet(dim=8, dim_mults=(1, 2), channels=1, text_dim=32, text_encoder="small",
             full_attn=False, linear_attn=False, mid_attn=False)


def test_dit_label_table_and_time_mlp_init_like_dit():
    """7d: DiT initialises its label table and timestep MLP from N(0, 0.02)."""
    torch.manual_seed(0)
    net = DiT(patch_size=4, hidden=256, depth=1, heads=4, channels=1, num_classes=1000)
    for w in (net.class_emb.weight, net.time_mlp[0].weight, net.time_mlp[2].weight):
        assert abs(float(w.detach().std()) - 0.02) < 0.002


def test_sampling_defaults_order():
    """Bug 2's one rule: the caller, else what the model declares, else the measured default of
    its model kind (issue 23: DEFAULT_SAMPLING), guidance 1."""
    from diffusionlab.core.sampling import DEFAULT_SAMPLING
    bare = lambda x, s, c=None: x  # noqa: E731
    c = sampling_defaults(bare)
    assert (c.sampler, c.steps, c.guidance) == (*DEFAULT_SAMPLING["bare"], 1.0)
    info = DenoiserInfo(default_sampler="heun", default_steps=18, default_guidance=3.0)
    c = sampling_defaults(info)
    assert (c.sampler, c.steps, c.guidance) == ("heun", 18, 3.0)
    c = sampling_defaults(info, "euler", 7, 1.5)
    assert (c.sampler, c.steps, c.guidance) == ("euler", 7, 1.5)
    assert sampling_defaults(info, "auto").sampler == "heun"


def test_training_draws_are_keyed_by_global_sample_index(tmp_path):
    """Keyed training draws: one step on a global batch of 8 equals the same batch in two
    micro-batches of 4 (grad_accum 2), as N processes that each draw their share equal one
    process (tests/test_distributed.py): the data order,
    flips, conditioning dropout, sigma / t and noise of sample i depend on (seed, step, i) only."""
    from diffusionlab.training import Trainer
    from diffusionlab.training.config import tiny_config

    def one_step(**kw):
        t = Trainer(config=tiny_config(data="digits", image_size=8, max_steps=1, hflip=True, cond="class",
                                       p_uncond=0.5, lr=1e-2, warmup_steps=0, grad_clip=None, ema_decay=0.0,
                                       val_every=0, checkpoint_every=0,
                                       out_dir=str(tmp_path / f"run{len(list(tmp_path.iterdir()))}"), **kw))
        t.train_step()
        return {k: v.detach().clone() for k, v in t.model.named_parameters()}

    a, b = one_step(batch_size=8, grad_accum=1), one_step(batch_size=8, grad_accum=2)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    c = one_step(batch_size=8, grad_accum=1, seed=1)
    assert any(not torch.allclose(a[k], c[k], atol=1e-6) for k in a)  # the seed matters


@pytest.mark.parametrize("process", ["edm", "ncsn", "ddpm"])
def test_recorded_sampling_defaults_win_for_every_process(process, tmp_path):
    """Bug 2: EDM and NCSN applied their class default before the checkpoint's record, and only
    conditional runs recorded one. Every run records its defaults, and a record wins."""
    import json

    from diffusionlab.apps.cli import main
    from diffusionlab.models.loading import load_denoiser

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1",
                 "--no-progress", "--process", process, "--steps", "1", "--out", str(run)]) == 0
    path = run / "checkpoints" / "step-00000001" / "config.json"
    cfg = json.loads(path.read_text())
    from diffusionlab.core.sampling import DEFAULT_SAMPLING
    own = {"edm": DEFAULT_SAMPLING["edm"], "ncsn": ("annealed_langevin", None),
           "ddpm": DEFAULT_SAMPLING["vp_discrete"]}[process]
    assert cfg["sampling"]["sampler"] == own[0] and cfg["sampling"]["guidance"] == 1.0
    cfg["sampling"].update(sampler="euler", steps=7)
    path.write_text(json.dumps(cfg))
    (path.parent / "manifest.json").unlink()  # edited by hand: no manifest to check against
    info = load_denoiser(run).info
    assert (info.default_sampler, info.default_steps) == ("euler", 7)
    assert (sampling_defaults(info).sampler, sampling_defaults(info).steps) == ("euler", 7)
