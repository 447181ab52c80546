"""The declared protocol (DenoiserInfo), the typed condition (Cond), and the batch-and-loss
interface of the trainer."""
import math

import pytest
import torch

from diffusionlab.core.protocol import Network

import diffusionlab as dl
from diffusionlab.core.cond import Batch, Cond, as_cond
from diffusionlab.core.denoiser import (DenoiserInfo, DiscreteDenoiser, EDMDenoiser, FlowDenoiser, NCSNDenoiser, SDEDenoiser,
                                   info_of)
from diffusionlab.core.guidance import Autoguided, Clipped
from diffusionlab.core.schedules import DiscreteSchedule
from diffusionlab.core.sde import SDES

from oracles import GaussianOracle


def _oracle():
    return GaussianOracle(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))


# ------------------------------------------------------------------ DenoiserInfo
def test_a_bare_function_gets_the_defaults():
    info = info_of(lambda x, s, c=None: x)
    assert (info.sigma_min, info.sigma_max, info.default_schedule) == (0.002, 80.0, "karras")
    assert info.prior_std(7.0) == 7.0 and not info.learned_variance and info.cond.fields == ()


DECLARED = {"image_shape": (1, 8, 8)}  # what a checkpoint declares, given at construction
DENOISERS = {
    "ddpm": lambda net: DiscreteDenoiser(net, DiscreteSchedule.from_name("linear", 100), "eps", declared=DECLARED),
    "vp": lambda net: SDEDenoiser(net, SDES["vp"](), declared=DECLARED),
    "subvp": lambda net: SDEDenoiser(net, SDES["subvp"](), declared=DECLARED),
    "ve": lambda net: SDEDenoiser(net, SDES["ve"](), declared=DECLARED),
    "edm": lambda net: EDMDenoiser(net, declared=DECLARED),
    "ncsn": lambda net: NCSNDenoiser(net, levels=20, declared=DECLARED),
    "flow": lambda net: FlowDenoiser(net, shift=3.0, declared=DECLARED),
}


@pytest.mark.parametrize("process", list(DENOISERS))
def test_every_denoiser_declares_its_info(process):
    net = dl.Unet(dim=8, dim_mults=(1,), channels=1, num_res_blocks=1, groups=4, num_classes=3)
    den = DENOISERS[process](net)
    info = den.info
    assert info.process == process and info.image_shape == (1, 8, 8)
    assert info.cond.fields == ("labels",) and info.cond.num_classes == 3
    assert 0 < info.sigma_min < info.sigma_max and info.device == torch.device("cpu")
    s = 3.0
    expect = {"ddpm": math.sqrt(1 + s * s), "vp": math.sqrt(1 + s * s), "flow": math.sqrt(1 + s * s)}.get(
        process, den.prior_std(s))
    assert info.prior_std(s) == pytest.approx(expect) == pytest.approx(den.prior_std(s))
    assert (info.table_sigmas is not None) == (process == "ddpm")
    assert (info.ladder is not None) == (process == "ncsn")
    assert (info.sde is not None) == (process in ("vp", "subvp", "ve"))
    # wrappers forward the record unchanged
    wrapped = Clipped(Autoguided(den, den, 2.0))
    w = wrapped.info
    assert (w.process, w.sigma_max, w.image_shape, w.table_sigmas is info.table_sigmas) == \
        (info.process, info.sigma_max, info.image_shape, True)


def test_zero_terminal_snr_gives_the_largest_finite_sigma():
    sched = DiscreteSchedule.from_name("cosine", 50, zero_terminal_snr=True)
    info = DiscreteDenoiser(torch.nn.Identity(), sched, "v").info
    assert math.isinf(info.sigma_max) and math.isfinite(info.finite_sigma_max())
    assert info.prior_std(math.inf) == 1.0


def test_samplers_read_the_declared_range():
    class Declared:
        info = DenoiserInfo(sigma_min=0.05, sigma_max=3.0, default_schedule="exponential")

        def __call__(self, x, sigma, cond=None):
            return x * 0

    seen = []
    dl.sample(Declared(), (2, 1), sampler="euler", steps=4, seed=0, callback=lambda d: seen.append(d["sigma"]))
    assert seen[0] == pytest.approx(3.0) and min(seen) == pytest.approx(0.05)


class Recording:
    """A closed-form denoiser (images N(mu + 0.2 * label, 0.3^2 I); D = mu + s^2 / (s^2 + sigma^2)
    (x - mu)) that records the name of every attribute the library reads on it. ``info`` and the
    protocol's methods are all a denoiser promises; anything else read is a probe of attributes
    outside the accessor."""

    def __init__(self, info, learned=False):
        object.__setattr__(self, "reads", [])
        object.__setattr__(self, "info", info)
        if learned:
            object.__setattr__(self, "denoise_with_variance",
                               lambda x, sigma, cond=None: (self(x, sigma, cond), torch.full_like(x, 0.5)))

    def __getattribute__(self, name):
        if name != "reads" and not (name.startswith("__") and name.endswith("__")):
            object.__getattribute__(self, "reads").append(name)
        return object.__getattribute__(self, name)

    def __call__(self, x, sigma, cond=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        mu = torch.zeros_like(x)
        if cond is not None and getattr(cond, "labels", None) is not None:
            mu = mu + 0.2 * cond.labels.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        out = mu + 0.09 / (0.09 + sigma ** 2) * (x - mu)
        return torch.where(torch.isfinite(sigma), out, mu.expand_as(x))


def _recorders():
    from diffusionlab.core.cond import CondSpec

    base = dict(sigma_min=0.02, sigma_max=20.0, image_shape=(1, 4, 4), prior="ve")
    return {"plain": Recording(DenoiserInfo(**base)),
            "class": Recording(DenoiserInfo(**base, cond=CondSpec(kind="class", num_classes=3))),
            "image": Recording(DenoiserInfo(**base, cond=CondSpec(kind="image", image_channels=1, lowres=(2, 2)))),
            "learned": Recording(DenoiserInfo(**base, learned_variance=True), learned=True)}


def test_the_library_reads_nothing_of_a_denoiser_but_its_protocol():
    """Sampling with every sampler, the guidance wrappers, CFG, classifier and reconstruction
    guidance, the likelihoods and the pipelines read ``info`` and call the denoiser (and
    ``denoise_with_variance`` where ``info.learned_variance``): no other attribute."""
    from diffusionlab.core.cfg import classifier_free
    from diffusionlab.core.guidance import ClassifierGuided, autoguidance, threshold
    from diffusionlab.core.likelihood import log_likelihood, vlb
    from diffusionlab.core.samplers import SAMPLERS
    from diffusionlab.pipelines.conditioning import conditioned
    from diffusionlab.pipelines.img2img import img2img
    from diffusionlab.pipelines.inpaint import inpaint, parse_mask
    from diffusionlab.pipelines.upscale import upscale

    dens = _recorders()
    plain, klass, image, learned = dens["plain"], dens["class"], dens["image"], dens["learned"]
    shape = (2, 1, 4, 4)
    x = torch.linspace(-0.8, 0.8, 32).reshape(shape)
    for name in sorted(SAMPLERS):
        knobs = {"n_steps_each": 1} if name == "annealed_langevin" else {}
        dl.sample(plain, shape, sampler=name, steps=3, seed=0, **knobs)
    dl.sample(plain, shape, seed=0)                                               # its own defaults
    dl.sample(learned, shape, sampler="ddpm", steps=3, seed=0)
    for guided in (threshold(plain, "clip"), threshold(plain, "dynamic"), autoguidance(plain, dens["plain"], 2.0),
                   ClassifierGuided(plain, lambda x, s: x.flatten(1)[:, :3] * 2, labels=1, scale=1.0)):
        dl.sample(guided, shape, sampler="heun", steps=3, seed=0)
    dl.sample(classifier_free(klass, 3.0, rescale=0.5), shape, sampler="ddim", steps=3, seed=0,
              cond=Cond(labels=torch.tensor([0, 2])))
    guided, cond = conditioned(klass, class_=1, guidance=2.0)
    dl.sample(guided, shape, sampler="euler", steps=3, seed=0, cond=cond(2))
    vlb(plain, x, T=6, decoder="gaussian", variance="large")
    vlb(learned, x, T=6, decoder="gaussian", variance="learned")
    log_likelihood(plain, x, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(0))
    img2img(plain, x, 0.5, steps=3, sampler="ddim")
    inpaint(plain, x, parse_mask("left", (1, 4, 4)), steps=4, sampler="ddim", jump_length=2, resample=2)
    upscale(image, torch.zeros(2, 1, 2, 2), steps=2, sampler="euler")
    for kind, den in dens.items():
        allowed = {"info"} | ({"denoise_with_variance"} if den.info.learned_variance else set())
        assert den.reads and set(den.reads) <= allowed, (kind, sorted(set(den.reads) - allowed))
    assert "denoise_with_variance" in learned.reads                   # the learned variance is used


# ------------------------------------------------------------------ Cond
def _cond(n=4):
    return Cond(labels=torch.arange(n), pooled=torch.randn(n, 3))


def test_cond_batch_index_cat_and_to():
    c = _cond()
    assert len(c) == 4 and c.batch_size == 4 and not c.is_empty
    part = c[1:3]
    assert torch.equal(part.labels, torch.tensor([1, 2])) and part.pooled.shape == (2, 3)
    both = Cond.cat([c, c.as_null()])
    assert len(both) == 8 and both.null.tolist() == [False] * 4 + [True] * 4
    assert Cond.cat([Cond(), Cond()]).is_empty
    with pytest.raises(ValueError, match="different fields"):
        Cond.cat([c, Cond(labels=torch.arange(2))])
    with pytest.raises(ValueError, match="batch size"):
        Cond(labels=torch.arange(3), pooled=torch.zeros(2, 1))


def test_cond_drop_is_seeded_and_has_the_asked_rate():
    c = Cond(labels=torch.zeros(20000, dtype=torch.long))
    a = c.drop(0.1, torch.Generator().manual_seed(0))
    b = c.drop(0.1, torch.Generator().manual_seed(0))
    assert torch.equal(a.null, b.null) and abs(a.null.float().mean().item() - 0.1) < 0.01
    assert c.drop(0.0).null is None and Cond().drop(0.5).is_empty
    assert c.drop(1.0, torch.Generator()).null.all()


def test_as_cond_keeps_the_older_tensor_hook():
    assert torch.equal(as_cond(torch.tensor([1, 2])).labels, torch.tensor([1, 2]))
    assert as_cond(torch.zeros(2, 5)).pooled.shape == (2, 5)
    assert as_cond(None).is_empty
    with pytest.raises(TypeError, match="Cond"):
        as_cond("seven")


def test_unet_null_label_is_the_learned_extra_row():
    net = dl.Unet(dim=8, dim_mults=(1,), channels=1, num_res_blocks=1, groups=4, num_classes=3)
    torch.nn.init.normal_(net.class_emb.weight)
    torch.nn.init.normal_(net.final_conv.weight)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 10.0])
    dropped = net(x, t, Cond(labels=torch.tensor([0, 1]), null=torch.tensor([True, True])))
    explicit = net(x, t, Cond(labels=torch.tensor([3, 3])))
    other = net(x, t, Cond(labels=torch.tensor([0, 1])))
    assert torch.allclose(dropped, explicit) and not torch.allclose(dropped, other)
    with pytest.raises(ValueError, match="text"):
        net(x, t, Cond(text=torch.zeros(2, 4, 8)))


def test_a_denoiser_passes_cond_through_to_the_network():
    seen = []

    class Net(Network):  # a library network: always called with a Cond
        def forward(self, x, t, cond):
            seen.append(cond)
            return torch.zeros_like(x)

    den = EDMDenoiser(Net())
    c = Cond(labels=torch.tensor([1, 2]))
    dl.sample(den, (2, 1, 2, 2), sampler="euler", steps=2, cond=c, seed=0)
    assert all(s is c for s in seen) and len(seen) == 2
    den(torch.zeros(2, 1, 2, 2), torch.ones(2))
    assert isinstance(seen[-1], Cond) and seen[-1].is_empty  # always a Cond, never None


# ------------------------------------------------------------------ Batch + loss
def test_losses_take_a_batch_and_equal_the_tensor_call():
    sched = DiscreteSchedule.from_name("linear", 50)
    loss = dl.GaussianDiffusion(dl.Unet(dim=8, dim_mults=(1,), channels=1, num_res_blocks=1, groups=4),
                                image_size=8, timesteps=50).loss_fn
    net = dl.Unet(dim=8, dim_mults=(1,), channels=1, num_res_blocks=1, groups=4)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    a = loss(net, Batch(x), generator=torch.Generator().manual_seed(1))
    b = loss(net, x, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3,) and torch.equal(a, b)
    with pytest.raises(ValueError, match="own cond"):
        loss(net, Batch(x), Cond(labels=torch.zeros(3, dtype=torch.long)))
    del sched


def test_trainer_takes_any_loss_object(tmp_path):
    from diffusionlab.training import Trainer, tiny_config

    calls = []

    class MeanLoss:  # a loss with state that must survive a resume
        def __init__(self):
            self.n = 0

        def __call__(self, net, batch, *, generator=None, autocast=None, train=True):
            calls.append((type(batch).__name__, len(batch)))
            self.n += int(train)
            out = net(batch.x, torch.zeros(len(batch)), batch.cond)
            return (out - batch.x).pow(2).flatten(1).mean(1)

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, d):
            self.n = d["n"]

    t = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=3, checkpoint_every=3), loss=MeanLoss())
    t.train()
    assert calls[0] == ("Batch", 8) and t.loss_fn.n == 3
    r = Trainer(config=tiny_config(out_dir=str(tmp_path), max_steps=4), loss=MeanLoss(), resume=True)
    assert r.loss_fn.n == 3


def test_class_conditional_training_batches_carry_the_labels(tmp_path):
    from diffusionlab.data import load_mnist
    from diffusionlab.training import Trainer, tiny_config

    cfg = tiny_config(out_dir=str(tmp_path), max_steps=1)
    cfg.model.num_classes = 10
    t = Trainer(config=cfg)
    images, labels = load_mnist("train", 32, return_labels=True)
    b = t.batch(5)
    for i in range(len(b)):  # every label belongs to its image (same fixed-seed order)
        k = int(((images - b.x[i].cpu()).abs().flatten(1).max(1).values < 1e-6).nonzero()[0])
        assert labels[k] == b.cond.labels[i]
    t.train()


def test_labelled_folders_yield_class_names(tmp_path):
    import numpy as np
    from PIL import Image

    from diffusionlab.data import load_image_sets

    for cls, value in (("cat", 30), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.fromarray(np.full((8, 8), value + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    train, val = load_image_sets(str(tmp_path), 8, 1, val_fraction=0.25)
    assert train.class_names == ["cat", "dog"] and len(train) + len(val) == 24
    for s in (train, val):
        bright = s.images.flatten(1).mean(1) > 0
        assert torch.equal(bright, s.labels == 1)
    flat = tmp_path / "cat"
    assert load_image_sets(str(flat), 8, 1)[0].labels is None  # no class sub-folders: no labels


def _flat_folder(root, n=24):
    import numpy as np
    from PIL import Image

    root.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 10 + 10 * i, np.uint8)).save(root / f"img{i}.png")
    return root


def test_labels_csv_beside_the_images_gives_labels_and_names(tmp_path):
    from diffusionlab.data import load_image_sets

    root = _flat_folder(tmp_path / "flat")
    rows = ["file,label"] + [f"img{i}.png,{'bright' if i >= 12 else 'dark'}" for i in range(24)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    train, val = load_image_sets(str(root), 8, 1, val_fraction=0.25)
    assert train.class_names == ["bright", "dark"] and len(train) + len(val) == 24
    for s in (train, val):
        assert torch.equal(s.images.flatten(1).mean(1) > 0, s.labels == 0)   # labels follow their images
    (root / "labels.csv").write_text("\n".join(f"img{i}.png,{i % 3 * 5}" for i in range(24)) + "\n")  # integers, no header
    train, _ = load_image_sets(str(root), 8, 1)
    assert train.class_names == ["0", "5", "10"]                                  # numeric order


@pytest.mark.parametrize("rows,msg", [
    ([f"img{i}.png,a" for i in range(23)], "have no label"),
    ([f"img{i}.png,{i % 2}" for i in range(24)] + ["nope.png,1"], "is not an image of"),
    ([f"img{i}.png,{i % 2}" for i in range(24)] + ["img0.png,1"], "second label"),
    ([f"img{i}.png" for i in range(24)], "expected 2 columns"),
    ([f"img{i}.png,same" for i in range(24)], "two classes or more"),
])
def test_bad_labels_csv_is_refused_with_the_line(tmp_path, rows, msg):
    from diffusionlab.data import load_image_sets

    root = _flat_folder(tmp_path / "flat")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=msg):
        load_image_sets(str(root), 8, 1)
