"""Few-step generation (core.distill, training.distill, `distill`, `train --few-step`): against exact
answers first. On Gaussian data the consistency function (the probability-flow ODE's map to the
boundary) is closed form; the parameterisation's boundary holds exactly for every process; the
consistency-distillation loss is zero at the exact consistency function with an exact teacher step
and positive away from it; the progressive target is two exact DDIM steps folded into one; the
guided teacher step is the closed-form guided Gaussian's; a student distilled from an exact
mixture denoiser samples the mixture in one step. Then the command line: students are ordinary
checkpoints that sample, resume exactly and refuse what they cannot do."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import diffusionlab as dl
from diffusionlab.apps.cli import main
from diffusionlab.core.cond import Cond
from diffusionlab.core.denoiser import EDMPrecond, boundary_coefficients, run_network
from diffusionlab.core.distill import ConsistencyLoss, ProgressiveLoss, ect_r, euler_to, guided
from diffusionlab.core.samplers import sample_consistency
from diffusionlab.core.sampling import sampling_defaults
from diffusionlab.models.processes import PROCESSES, DiffusionConfig, build_denoiser
from diffusionlab.training import Trainer, tiny_config
from oracles import GaussianConsistency, GaussianOracle, MixtureOracle

F64 = torch.float64
SD = 0.5  # EDM's sigma_data (the preconditioner of the exact nets below)


def _gaussian(d=4):
    g = torch.Generator().manual_seed(3)
    return torch.rand(d, generator=g, dtype=F64) - 0.5, 0.02 + 0.1 * torch.rand(d, generator=g, dtype=F64)


class ExactNet(nn.Module):
    """The EDM network output that makes ``run_network(net, EDMPrecond, ..., boundary)`` equal a
    given function f(x, sigma): it reads sigma from c_noise = ln(sigma) / 4 and x from c_in x."""

    def __init__(self, f, boundary, scale: float = 1.0):
        super().__init__()
        self.f, self.boundary, self.scale = f, boundary, scale
        self.calls = 0
        self.bias = nn.Parameter(torch.zeros((), dtype=F64))  # perturbs f away from the exact one

    def forward(self, x_in, c_noise):
        self.calls += 1
        sigma = (4 * c_noise.to(F64)).exp()
        s = sigma[:, None]
        x = x_in * (s ** 2 + SD ** 2).sqrt()
        target = self.f(x, sigma) + self.bias * s  # bias: a sigma-dependent error
        c_skip, c_out = SD ** 2 / (s ** 2 + SD ** 2), s * SD / (s ** 2 + SD ** 2).sqrt()
        d = target
        if self.boundary is not None:
            a, b = (v[:, None] for v in boundary_coefficients(sigma, self.boundary))
            d = (target - a * x) / b
        return (d - c_skip * x) / c_out


# ------------------------------------------------------------------ the boundary


class _Plain(nn.Module):
    def forward(self, x, t):
        return torch.tanh(x) + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_boundary_holds_exactly_for_every_process(process):
    extra = {"timesteps": 100} if process == "ddpm" else {}
    den = build_denoiser(_Plain(), DiffusionConfig(process=process, consistency=True, **extra), (1, 4, 4))
    plain = build_denoiser(_Plain(), DiffusionConfig(process=process, **extra), (1, 4, 4))
    assert den.boundary == den.sigma_min > 0
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    at = lambda s: torch.full((3,), s, dtype=F64)  # noqa: E731
    assert torch.equal(den(x, at(den.sigma_min)), x)                      # f(x, sigma_min) = x exactly
    assert torch.equal(den(x, at(den.sigma_min / 2)), x)                  # and below it
    assert not torch.equal(den(x, at(2 * den.sigma_min)), x)
    big = min(50.0, den.info.finite_sigma_max())
    assert torch.allclose(den(x, at(big)), plain(x, at(big)), rtol=1e-3, atol=1e-3 * big)  # far from it, f = D


def test_boundary_coefficients_are_the_consistency_models_edm_scalings():
    sigma = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=F64)
    a, b = boundary_coefficients(sigma, 0.002)
    c_skip = SD ** 2 / (sigma ** 2 + SD ** 2)
    c_out = sigma * SD / (sigma ** 2 + SD ** 2).sqrt()
    cm_skip = SD ** 2 / ((sigma - 0.002) ** 2 + SD ** 2)
    cm_out = (sigma - 0.002) * SD / (sigma ** 2 + SD ** 2).sqrt()
    F = torch.randn(5, dtype=F64)
    x = torch.randn(5, dtype=F64)
    assert torch.allclose(a * x + b * (c_skip * x + c_out * F), cm_skip * x + cm_out * F)
    a_inf, b_inf = boundary_coefficients(torch.tensor([math.inf], dtype=F64), 0.002)
    assert float(a_inf) == 0 and float(b_inf) == 1


# ------------------------------------------------------------------ exact answers on Gaussians


def test_ect_mapping_tightens_and_stays_between_the_boundary_and_t():
    t = torch.exp(torch.linspace(-6, 4.5, 400, dtype=F64))
    for stage in range(6):
        r = ect_r(t, stage, 2.0, 0.002)
        assert bool((r <= t).all()) and bool((r >= 0.002).all())
        n = 1 + 8 * torch.sigmoid(-t)
        free = r > 0.002
        assert torch.allclose(((t - r) / t)[free], (n / 2 ** (stage + 1))[free])
        assert bool((~free == (t * (1 - n / 2 ** (stage + 1)) <= 0.002)).all())
    gaps = [float(((t - ect_r(t, s, 2.0, 0.002)) / t).mean()) for s in range(6)]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))


def _cd_loss(mu, var, f, teacher_step=None, stage=3):
    """Consistency distillation of a Gaussian's exact denoiser; ``teacher_step`` replaces the one
    Euler step by another (the exact ODE map)."""
    loss = ConsistencyLoss(EDMPrecond(SD), 0.002, 80.0, teacher=GaussianOracle(mu, var), c=1e-12)
    if teacher_step is not None:
        loss.target_point = lambda x0, x_t, t, r, eps, cond, scale: teacher_step(x_t, t, r)
    loss.at_step(stage * loss.stage_steps)
    net = ExactNet(f, 0.002)
    g = torch.Generator().manual_seed(0)
    x0 = mu + var.sqrt() * torch.randn(512, len(mu), generator=g, dtype=F64)
    return loss, net, x0, g


def test_consistency_loss_is_zero_at_the_exact_consistency_function_and_positive_away():
    mu, var = _gaussian()
    f_star = GaussianConsistency(mu, var, sigma_b=0.002)
    exact_step = lambda x_t, t, r: mu + (x_t - mu) * ((var + r[:, None] ** 2) / (var + t[:, None] ** 2)).sqrt()  # noqa: E731
    loss, net, x0, g = _cd_loss(mu, var, f_star, exact_step)
    values = loss(net, x0, generator=g)
    assert float(values.detach().abs().max()) < 1e-6
    with torch.no_grad():
        net.bias.fill_(0.05)
    t = torch.exp(torch.linspace(-5, 4, 512, dtype=F64))  # every t above the boundary
    assert float(loss(net, x0, t=t, generator=torch.Generator().manual_seed(0)).detach().min()) > 1e-3


def test_one_euler_teacher_step_converges_to_the_exact_target_as_the_gap_tightens():
    mu, var = _gaussian()
    f_star = GaussianConsistency(mu, var, sigma_b=0.002)
    errs = []
    for stage in (2, 4, 6):
        loss, net, x0, g = _cd_loss(mu, var, f_star, stage=stage)
        t = torch.full((512,), 2.0, dtype=F64)
        errs.append(float((loss(net, x0, t=t, generator=g).detach() * (t - ect_r(t, loss.stage, 2.0, 0.002))).mean()))
    assert errs[0] > 3 * errs[1] > 9 * errs[2] > 0  # ||f(x_t) - f(x_r)|| = O((t - r)^2): the gap quarters


def test_the_sampler_is_exact_with_the_exact_consistency_function():
    mu, var = _gaussian(3)
    f_star = GaussianConsistency(mu, var)
    g = torch.Generator().manual_seed(1)
    x_T = mu + (var + 80.0 ** 2).sqrt() * torch.randn(40000, 3, generator=g, dtype=F64)
    for grid in ([80.0, 0.0], [80.0, 0.8, 0.0], [80.0, 5.0, 1.0, 0.2, 0.0]):
        out = sample_consistency(f_star, x_T.clone(), torch.tensor(grid, dtype=F64), generator=g)
        assert torch.allclose(out.mean(0), mu, atol=0.01)
        assert torch.allclose(out.var(0) / var, torch.ones(3, dtype=F64), atol=0.05)


def test_progressive_target_is_two_exact_ddim_steps_in_one():
    mu, var = _gaussian()
    oracle = GaussianOracle(mu, var)
    grid = torch.tensor([10.0, 2.0, 0.4, 0.0], dtype=F64)
    fine = torch.tensor([10.0, 5.0, 2.0, 0.9, 0.4, 0.1, 0.0], dtype=F64)
    loss = ProgressiveLoss(EDMPrecond(SD), oracle, grid, fine)
    x = mu + (var + 4.0).sqrt() * torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    for i in range(3):
        s, m, sn = (torch.full((64,), float(v), dtype=F64) for v in (grid[i], fine[2 * i + 1], grid[i + 1]))
        target = loss.target(x, s, m, sn, None, None)
        x1 = oracle(x, s) + (m / s)[:, None] * (x - oracle(x, s))
        x2 = oracle(x1, m) + (sn / m)[:, None] * (x1 - oracle(x1, m))
        student_step = euler_to(target, x, s, sn)   # one DDIM step with the target as x0 lands on x2
        assert torch.allclose(student_step, x2, atol=1e-10)
    # a student that outputs the target has zero loss; the teacher itself (one step) does not
    student = ExactNet(lambda xx, ss: loss.target(xx, ss, torch.full_like(ss, 5.0), torch.full_like(ss, 2.0),
                                                   None, None), None)
    x0 = mu + var.sqrt() * torch.randn(64, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert float(loss(student, x0, i=0).detach().max()) < 1e-12
    teacher_net = ExactNet(lambda xx, ss: oracle(xx, ss), None)
    assert float(loss(teacher_net, x0, i=0).detach().min()) > 0


def test_guided_teacher_step_is_the_guided_gaussians():
    """Conditional N(mu_c, s^2) and unconditional N(mu_u, s^2): CFG at scale w gives the denoiser of
    N(mu_u + w (mu_c - mu_u), s^2), per sample."""
    mu_c, mu_u, var = torch.tensor([0.5, -0.2], dtype=F64), torch.tensor([0.0, 0.1], dtype=F64), torch.tensor([0.04, 0.09], dtype=F64)
    cond_o, null_o = GaussianOracle(mu_c, var), GaussianOracle(mu_u, var)

    class Teacher:
        info = dl.DenoiserInfo(cond=dl.CondSpec(kind="class", num_classes=2))

        def __call__(self, x, sigma, cond):
            null = cond.null_mask(x.shape[0])[:, None]
            return torch.where(null, null_o(x, sigma), cond_o(x, sigma))

    x = torch.randn(6, 2, dtype=F64)
    sigma = torch.full((6,), 1.3, dtype=F64)
    scale = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0, 7.5])
    out = guided(Teacher(), x, sigma, Cond(labels=torch.zeros(6, dtype=torch.long)), scale)
    mu_w = mu_u + scale.to(F64)[:, None] * (mu_c - mu_u)
    assert torch.allclose(out, mu_w + var / (var + 1.3 ** 2) * (x - mu_w))


def test_a_student_distilled_from_an_exact_mixture_samples_it_in_one_step():
    """Consistency distillation (one Euler teacher step, the tightening pairs) of a 2-D mixture's
    exact denoiser into a small MLP from scratch: 1,600 steps of 256 (a few seconds). One step of
    the student lands within sliced W2 0.2 of the data; the teacher's one step gives its mean
    (0.6) and the data's own sampling floor is 0.05."""
    torch.manual_seed(0)
    means = torch.tensor([[-0.6, -0.6], [0.6, -0.6], [-0.6, 0.6], [0.6, 0.6]])
    mix = MixtureOracle(means, torch.full((4,), 0.1), torch.ones(4))

    class MLP(nn.Module):
        def __init__(self, h=128):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(18, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 2))

        def forward(self, x, t):
            e = t.to(x.dtype)[:, None] * 2.0 ** torch.arange(8, dtype=x.dtype)
            return self.f(torch.cat([x, e.sin(), e.cos()], 1))

    net, pre = MLP(), EDMPrecond(SD)
    loss = ConsistencyLoss(pre, 0.002, 80.0, teacher=lambda x, s, c=None: mix(x, s.to(x.dtype)), stage_steps=300)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        for it in range(1600):
            loss.at_step(it)
            value = loss(net, mix.sample(256, g), generator=g).mean()
            opt.zero_grad()
            value.backward()
            opt.step()
    ref = mix.sample(4000, torch.Generator().manual_seed(9))
    z = 80.0 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        one = run_network(net, pre, z, torch.full((4000,), 80.0), None, None, 0.002)[0]
    d = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))
    d = d / d.norm(dim=1, keepdim=True)
    sw2 = lambda a: float((((a @ d.T).sort(0)[0] - (ref @ d.T).sort(0)[0]) ** 2).mean().sqrt())  # noqa: E731
    assert sw2(one) < 0.2, sw2(one)
    assert sw2(mix(z, torch.full((4000,), 80.0))) > 0.5


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tiny class-conditional teacher and a tiny unconditional one (6 steps each)."""
    root = tmp_path_factory.mktemp("distill")
    cls = tiny_config(out_dir=str(root / "cls"), data="digits", image_size=8, cond="class", p_uncond=0.2,
                      guidance=2.0, max_steps=6, num_threads=1)
    Trainer(config=cls).train()
    unc = tiny_config(out_dir=str(root / "unc"), data="digits", image_size=8, max_steps=6, num_threads=1)
    Trainer(config=unc).train()
    return root


def _distill(teacher, out, *extra):
    return main(["distill", "--ckpt", str(teacher), "--out", str(out), "--threads", "1", "--no-progress", *extra])


def _config(run) -> dict:
    from diffusionlab.models.checkpoint import find_checkpoint, read_config

    return read_config(find_checkpoint(run))


def test_consistency_student_takes_guidance_as_input_and_samples_in_one_call_a_step(teachers, tmp_path):
    out = tmp_path / "c"
    assert _distill(teachers / "cls", out, "--method", "consistency", "--steps", "3") == 0
    cfg = _config(out)
    assert cfg["sampling"]["sampler"] == "consistency" and cfg["sampling"]["steps"] == 2
    assert len(cfg["sampling"]["sigmas"]) == 3 and cfg["diffusion"]["consistency"]
    assert cfg["network"]["config"]["guidance_input"] and cfg["train"]["distill"]["guidance_range"] == [1.0, 5.0]
    den = dl.load_denoiser(out)
    assert den.info.cond.guidance_input and den.boundary == den.sigma_min
    choice = sampling_defaults(den, None, None, 3.0)
    assert not choice.classifier_free and sampling_defaults(dl.load_denoiser(teachers / "cls"), None, None, 3.0).classifier_free
    from diffusionlab.pipelines.conditioning import conditioned

    g, cond = conditioned(den, class_=3, guidance=3.0)
    assert g is den  # never wrapped in CFG
    c = cond(4)
    assert torch.equal(c.guidance, torch.full((4,), 3.0))
    for steps in (1, 2, 4):
        x, info = dl.sample(g, (4, *den.info.image_shape), None, steps, cond=c, seed=0, return_info=True)
        assert info["nfe"] == steps and torch.isfinite(x).all()
    assert main(["sample", "--ckpt", str(out), "--class", "3", "--guidance", "3", "--steps", "2", "--n", "4",
                 "--out", str(tmp_path / "s.png"), "--npy", str(tmp_path / "s.npy")]) == 0
    assert main(["sample", "--ckpt", str(out), "--class", "3", "--negative-class", "1", "--n", "2",
                 "--out", str(tmp_path / "n.png")]) == 2
    assert main(["img2img", "--ckpt", str(out), "--input", str(tmp_path / "s.npy"), "--strength", "0.5",
                 "--class", "3", "--out", str(tmp_path / "i.png")]) == 0


def test_the_student_starts_as_its_teacher(teachers):
    from diffusionlab.training.distill import distill_config, student_network
    from diffusionlab.training.finetune import base_network

    cfg = distill_config(str(teachers / "cls"), "consistency", out_dir="/tmp/unused-student")
    base = base_network(cfg)
    student = student_network(cfg, base).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 400.0, 90.0])
    c = Cond(labels=torch.tensor([1, 2, 3]))
    assert torch.allclose(student(x, t, c.with_guidance(4.0)), base.eval()(x, t, c), atol=1e-6)


def test_unconditional_teacher_gets_consistency_tuning_and_resume_is_exact(teachers, tmp_path):
    from diffusionlab.training.distill import distill_config

    cfg = lambda out: distill_config(str(teachers / "unc"), "consistency", max_steps=4, stage_steps=2,  # noqa: E731
                                     out_dir=str(out), num_threads=1, progress=False)
    Trainer(config=cfg(tmp_path / "a")).train()
    Trainer(config=cfg(tmp_path / "b")).train(stop_after=2)   # killed after 2 steps (stage 0), resumed in stage 1
    Trainer(config=cfg(tmp_path / "b"), resume=True).train()
    rec = _config(tmp_path / "a")
    assert rec["train"]["distill"]["guidance_range"] is None and not rec["network"]["config"]["guidance_input"]
    assert rec["diffusion"]["consistency"] and rec["step"] == 4
    sa, sb = dl.load_denoiser(tmp_path / "a").state_dict(), dl.load_denoiser(tmp_path / "b").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_progressive_stages_halve_the_grid_and_the_student_samples_with_ddim(teachers, tmp_path):
    out = tmp_path / "p"
    assert _distill(teachers / "cls", out, "--method", "progressive", "--steps-to", "2", "--start-steps", "8",
                    "--steps", "4") == 0
    stage = _config(out / "stages" / "4-steps")
    final = _config(out)
    assert final["sampling"]["sampler"] == "ddim" and final["sampling"]["steps"] == 2
    assert stage["sampling"]["sigmas"][::2] == final["sampling"]["sigmas"]
    assert final["train"]["distill"]["teacher"] == str(out / "stages" / "4-steps")
    den = dl.load_denoiser(out)
    assert torch.equal(dl.resolve_sigmas(den, 2, sampler="ddim"), torch.tensor(final["sampling"]["sigmas"], dtype=F64))
    assert main(["sample", "--ckpt", str(out), "--class", "2", "--n", "2", "--out", str(tmp_path / "p.png")]) == 0


@pytest.mark.parametrize("argv, flag", [
    (["--method", "consistency", "--steps-to", "3", "--steps", "2"], "--steps-to"),
    (["--method", "progressive", "--steps-to", "4", "--start-steps", "4", "--steps", "2"], "--start-steps"),
    (["--method", "consistency"], "--steps"),
    (["--method", "consistency", "--steps", "2", "--guidance-range", "5,1"], "--guidance-range"),
])
def test_bad_requests_are_user_errors_that_name_the_flag(teachers, tmp_path, capsys, argv, flag):
    assert _distill(teachers / "cls", tmp_path / "x", *argv) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_consistency_model_cannot_be_a_teacher(teachers, tmp_path, capsys):
    assert _distill(teachers / "unc", tmp_path / "c", "--method", "consistency", "--steps", "1") == 0
    assert _distill(tmp_path / "c", tmp_path / "c2", "--method", "progressive", "--steps", "2") == 2
    assert "consistency model" in capsys.readouterr().err


def test_train_few_step_consistency_from_scratch(tmp_path):
    out = tmp_path / "ct"
    assert main(["train", "--preset", "tiny", "--data", "digits", "--image-size", "8", "--few-step", "consistency",
                 "--steps", "3", "--out", str(out), "--threads", "1"]) == 0
    cfg = _config(out)
    assert cfg["diffusion"]["consistency"] and cfg["sampling"]["sampler"] == "consistency"
    x = dl.sample(dl.load_denoiser(out), (2, 1, 8, 8), seed=0)
    assert torch.isfinite(x).all()
