"""diffusers models in and out (models.diffusers_io, nn.diffusers_net, models.export).

Tiny random diffusers models are saved to a temporary folder the way ``save_pretrained`` writes
them. Default suite: the scheduler mapping (one case per scheduler kind, against the
scheduler's own tables), loading as a denoiser, the pickle refusal, the diffusers layout and the
export round trip. ``-m interop`` (make test-interop): our samplers equal diffusers' own
loops from the same initial noise - DDIM on eps / v / x0 models, CFG on a ``UNet2DConditionModel``
driven by embeddings, DiT, EDM Euler, flow-matching Euler - and the exported folder equals our
checkpoint in diffusers' own DDIM loop.
"""
from __future__ import annotations

import json

import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.cond import Cond
from diffusionlab.core.cfg import ClassifierFree
from diffusionlab.errors import UserError
from diffusionlab.models.checkpoint import CheckpointError
from diffusionlab.models.diffusers_io import is_diffusers_folder, process_scheduler, scheduler_process
from diffusionlab.models.loading import load_denoiser, read_checkpoint
from diffusionlab.models.processes import PROCESSES, fill

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' schedulers under numpy 2

TOL = 1e-4  # the bar for sampler equality; measured values are ~1e-6 (float32)


def _randomize(model, seed=0, std=0.05):
    """Random non-trivial weights (diffusers zero-inits some output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _unet2d(num_class_embeds=None, out_channels=1):
    return _randomize(diffusers.UNet2DModel(
        sample_size=16, in_channels=1, out_channels=out_channels, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, num_class_embeds=num_class_embeds))


def _unet_cond():
    return _randomize(diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=2, out_channels=2, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, attention_head_dim=4, cross_attention_dim=8))


def _dit():
    return _randomize(diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2, num_layers=2, patch_size=2,
        sample_size=8, num_embeds_ada_norm=10, norm_num_groups=2))


def _save(folder, model, scheduler, sub="unet"):
    model.save_pretrained(folder / sub)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


DDPM_CASES = [  # (scheduler class, config): one per beta schedule / prediction type / spacing / scheduler kind
    ("DDIMScheduler", dict(beta_schedule="linear", prediction_type="epsilon", timestep_spacing="leading")),
    ("DDIMScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           prediction_type="v_prediction", timestep_spacing="trailing")),
    ("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="linspace")),
    ("DDIMScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")),
    ("DDPMScheduler", dict(beta_schedule="sigmoid", num_train_timesteps=500)),
    ("DDIMScheduler", dict(trained_betas=torch.linspace(1e-4, 0.03, 200).tolist(), num_train_timesteps=200)),
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True)),
    ("EulerAncestralDiscreteScheduler", {}), ("HeunDiscreteScheduler", {}), ("LMSDiscreteScheduler", {}),
    ("PNDMScheduler", {}), ("KDPM2DiscreteScheduler", {}), ("KDPM2AncestralDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++")),
    ("DPMSolverSinglestepScheduler", {}), ("DEISMultistepScheduler", {}), ("UniPCMultistepScheduler", {}),
]


@pytest.mark.parametrize("name,kw", DDPM_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(DDPM_CASES)])
def test_ddpm_scheduler_maps_to_the_same_process(name, kw):
    sched = getattr(diffusers, name)(**kw)
    m = scheduler_process(dict(sched.config, _class_name=name))
    d = fill(m.diffusion, (1, 16, 16))
    den = PROCESSES["ddpm"].make_denoiser(torch.nn.Identity(), d)
    abar = den.precond.schedule.abar
    theirs = sched.alphas_cumprod.to(torch.float64)
    assert m.diffusion.timesteps == len(theirs)
    assert torch.allclose(abar, theirs, rtol=1e-5, atol=1e-7)
    assert m.diffusion.objective == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[sched.config.prediction_type]
    assert m.diffusion.zero_terminal_snr == bool(sched.config.get("rescale_betas_zero_snr", False))
    assert m.sampler in dl.SAMPLERS
    if name == "DDIMScheduler":  # the grid: the scheduler's own timesteps
        sched.set_timesteps(10)
        grid = dl.core.schedules.get_sigmas(m.schedule, 10, table_sigmas=den.info.table_sigmas)
        ours = torch.as_tensor([int(torch.argmin((den.info.table_sigmas.log() - s.log()).abs())) for s in grid[:-1]])
        assert torch.equal(ours, sched.timesteps.long())


def test_edm_and_flow_schedulers_map():
    edm = scheduler_process(dict(diffusers.EDMEulerScheduler(sigma_min=0.01, sigma_max=40.0).config,
                                 _class_name="EDMEulerScheduler"))
    assert (edm.diffusion.process, edm.diffusion.sigma_min, edm.diffusion.sigma_max, edm.diffusion.sigma_data) == \
        ("edm", 0.01, 40.0, 0.5)
    flow = scheduler_process(dict(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config,
                                  _class_name="FlowMatchEulerDiscreteScheduler"))
    assert (flow.diffusion.process, flow.diffusion.shift, flow.sampler) == ("flow", 3.0, "euler")
    assert flow.timestep_scale == pytest.approx(1000 / 999)
    for shift in (1.0, 3.0):  # the loaded model's default 'flow' grid is the scheduler's own
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        m = scheduler_process(dict(sched.config, _class_name="FlowMatchEulerDiscreteScheduler"))
        den = PROCESSES["flow"].make_denoiser(torch.nn.Identity(), fill(m.diffusion, (1, 8, 8)),
                                              declared={"sigma_min": m.sigma_min})
        sched.set_timesteps(8)
        grid = dl.core.sampling.resolve_sigmas(den, 8, schedule="flow")
        t = torch.where(torch.isinf(grid), torch.ones_like(grid), grid / (1 + grid))
        assert torch.allclose(t, sched.sigmas.to(torch.float64), atol=1e-6)
    with pytest.raises(UserError, match="use_dynamic_shifting"):
        scheduler_process(dict(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config,
                               _class_name="FlowMatchEulerDiscreteScheduler"))
    with pytest.raises(UserError, match="supported"):
        scheduler_process({"_class_name": "LCMScheduler"})


def test_export_scheduler_is_the_inverse():
    from diffusionlab.models.processes import DiffusionConfig

    for d in (DiffusionConfig(process="ddpm", beta_schedule="cosine", objective="v", timesteps=300),
              DiffusionConfig(process="ddpm", beta_schedule="linear", objective="v", zero_terminal_snr=True)):
        cfg = process_scheduler(d)
        sched = diffusers.DDIMScheduler.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
        ours = PROCESSES["ddpm"].make_denoiser(torch.nn.Identity(), fill(d, (1, 8, 8))).precond.schedule.abar
        assert torch.allclose(ours, sched.alphas_cumprod.to(torch.float64), rtol=1e-5, atol=1e-7)
        assert scheduler_process(cfg).diffusion.objective == d.objective
    with pytest.raises(UserError, match="no diffusers scheduler"):
        process_scheduler(DiffusionConfig(process="edm"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type="v_prediction", clip_sample=False, timestep_spacing="leading")
    return {"unet": _save(root / "unet2d", _unet2d(), sched),
            "class": _save(root / "class", _unet2d(num_class_embeds=5), sched),
            "text": _save(root / "text", _unet_cond(),
                          diffusers.DDIMScheduler(prediction_type="epsilon", clip_sample=False)),
            "dit": _save(root / "dit", _dit(), diffusers.DDIMScheduler(clip_sample=False), "transformer"),
            "clip": _save(root / "clip", _unet2d(), diffusers.DDIMScheduler(clip_sample=True))}


def test_folders_load_as_denoisers(folders):
    assert all(is_diffusers_folder(f) for f in folders.values())
    den = load_denoiser(folders["unet"])
    assert den.info.process == "ddpm" and den.info.image_shape == (1, 16, 16)
    assert den.info.default_sampler == "ddim" and den.info.default_schedule == "leading"
    x = dl.sample(den, (2, 1, 16, 16), steps=3, seed=0)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    cls = load_denoiser(folders["class"]).info.cond
    assert (cls.kind, cls.num_classes) == ("class", 5)
    text = load_denoiser(folders["text"]).info.cond
    assert (text.kind, text.text_dim) == ("text", 8)
    dit = load_denoiser(folders["dit"])
    assert dit.info.learned_variance and dit.info.cond.num_classes == 10 and dit.info.image_shape == (1, 8, 8)
    clipped = load_denoiser(folders["clip"])  # clip_sample: our clip threshold on x0
    x0 = clipped(torch.randn(2, 1, 16, 16) * 50, torch.full((2,), 50.0))
    assert x0.abs().max() <= 1.0 + 1e-6


def test_conditions_a_diffusers_model_cannot_take(folders):
    den = load_denoiser(folders["class"])
    x, s = torch.randn(2, 1, 16, 16), torch.full((2,), 2.0)
    with pytest.raises(UserError, match="no null class"):
        ClassifierFree(den, 3.0)(x, s, Cond(labels=torch.tensor([1, 2])))
    text = load_denoiser(folders["text"])
    with pytest.raises(UserError, match="negative"):
        ClassifierFree(text, 3.0)(torch.randn(1, 2, 16, 16), torch.full((1,), 2.0), Cond(text=torch.randn(1, 4, 8), mask=torch.ones(1, 4, dtype=torch.bool)))


def test_pickled_weights_need_trust(folders, tmp_path):
    import shutil

    folder = tmp_path / "bin"
    _unet2d().save_pretrained(folder / "unet", safe_serialization=False)
    shutil.copytree(folders["unet"] / "scheduler", folder / "scheduler")
    assert not list((folder / "unet").glob("*.safetensors"))
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_denoiser(folder)
    a = load_denoiser(folder, trust_pickle=True)
    b = load_denoiser(folders["unet"])
    x, s = torch.randn(1, 1, 16, 16), torch.full((1,), 1.5)
    assert torch.allclose(a(x, s), b(x, s), atol=1e-6)


def test_cli_samples_a_diffusers_folder(folders, tmp_path):
    from diffusionlab.apps.cli import main

    out = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(folders["dit"]), "--n", "2", "--steps", "2", "--class", "3",
                 "--guidance", "2", "--npy", str(out), "--out", str(tmp_path / "g.png")]) == 0
    import numpy as np

    assert np.load(out).shape == (2, 1, 8, 8)
    assert main(["sample", "--ckpt", str(tmp_path / "missing"), "--n", "1"]) == 2


# ------------------------------------------------------------------ equality with diffusers' loops
def _close(ours, theirs):
    """Equal to TOL, relative to the sample's scale where it exceeds 1 (an eps model's random
    weights give x0 of magnitude ~100 at the first steps: float32 carries ~7 digits)."""
    return float((ours - theirs).abs().max()) <= TOL * max(1.0, float(theirs.abs().max()))


def _ddim_loop(model, sched, noise, steps, **kwargs):
    sched.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = model(x, t.expand(x.shape[0]), **kwargs).sample
            x = sched.step(out[:, :x.shape[1]], t, x).prev_sample
    return x


@pytest.mark.interop
@pytest.mark.parametrize("pred,spacing", [("epsilon", "leading"), ("v_prediction", "trailing"), ("sample", "trailing")])
def test_ddim_equals_diffusers(tmp_path, pred, spacing):
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type=pred, clip_sample=False, timestep_spacing=spacing)
    model = _unet2d()
    den = load_denoiser(_save(tmp_path / "f", model, sched))
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = dl.sample(den, (2, 1, 16, 16), sampler="ddim", steps=10, schedule=spacing, noise=noise)
    theirs = _ddim_loop(model, sched, noise, 10)  # (not 'linspace': diffusers' DDIM then steps to t - T // steps,
    assert _close(ours, theirs)                     # not to the next timestep of its own list)


@pytest.mark.interop
def test_cfg_equals_diffusers_guidance_on_embeddings(tmp_path):
    sched = diffusers.DDIMScheduler(prediction_type="epsilon", clip_sample=False, timestep_spacing="trailing")
    model = _unet_cond()
    den = load_denoiser(_save(tmp_path / "f", model, sched))
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    noise = torch.randn(2, 2, 16, 16, generator=g)
    scale = 4.0
    ours = dl.sample(ClassifierFree(den, scale, negative=Cond(text=neg)), (2, 2, 16, 16), sampler="ddim", steps=8,
                     schedule="trailing", noise=noise, cond=Cond(text=pos))
    sched.set_timesteps(8)
    x = noise.clone()
    with torch.no_grad():  # the StableDiffusionPipeline's loop with prompt_embeds / negative_prompt_embeds
        for t in sched.timesteps:
            out = model(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([neg, pos])).sample
            uncond, cond = out.chunk(2)
            x = sched.step(uncond + scale * (cond - uncond), t, x).prev_sample
    assert _close(ours, x)


@pytest.mark.interop
def test_dit_equals_diffusers(tmp_path):
    sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    model = _dit()
    den = load_denoiser(_save(tmp_path / "f", model, sched, "transformer"))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 7])
    ours = dl.sample(den, (2, 1, 8, 8), sampler="ddim", steps=5, schedule="trailing", noise=noise,
                     cond=Cond(labels=labels))  # steps divide T: diffusers' DDIM steps to t - T // steps
    assert _close(ours, _ddim_loop(model, sched, noise, 5, class_labels=labels))


@pytest.mark.interop
def test_edm_and_flow_euler_equal_diffusers(tmp_path):
    model = _unet2d()
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    for sched, sub in ((diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0), "edm"),
                       (diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), "flow")):
        den = load_denoiser(_save(tmp_path / sub, model, sched))
        sched.set_timesteps(8)
        edm = sub == "edm"  # the EDM pipeline scales the noise and the model input; the flow one neither
        x = noise * sched.init_noise_sigma if edm else noise.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                out = model(sched.scale_model_input(x, t) if edm else x, t.expand(2)).sample
                x = sched.step(out, t, x).prev_sample
        ours = dl.sample(den, (2, 1, 16, 16), sampler="euler", steps=8, noise=noise,
                         schedule="karras" if sub == "edm" else "flow")
        assert _close(ours, x), sub


def test_the_page_lists_and_loads_diffusers_folders(folders):
    pytest.importorskip("fastapi")
    from diffusionlab.apps.serve.catalog import Catalog

    cat = Catalog(folders["unet"].parent)
    listed = {e["id"]: e for e in cat.list()}
    assert set(listed) == {"unet2d", "class", "dit", "clip"}  # the embeddings-only text model is the API's
    assert listed["dit"]["classes"] == list(range(10)) and listed["dit"]["image_shape"] == [1, 8, 8]
    assert listed["unet2d"]["process"] == "ddpm" and listed["unet2d"]["sampler"] == "ddim"
    den = cat.load("dit")
    assert den.info.cond.num_classes == 10
