"""Continuous processes (VP / sub-VP / VE SDEs, EDM, NCSN): denoiser adapters against exact
Gaussian oracles, their losses' known minima, and training -> checkpoint -> sampling end to end
through the Trainer and the CLI."""
import json
import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.apps.cli import main
from diffusionlab.models.continuous import ContinuousDiffusion
from diffusionlab.models.processes import PROCESSES
from diffusionlab.core.denoiser import (DiscreteDenoiser, EDMDenoiser, EDMPrecond, FlowDenoiser, NCSNDenoiser,
                                        SDEDenoiser, geometric_ladder, ncsn_levels_for)
from diffusionlab.models.loading import load_denoiser, load_diffusion
from diffusionlab.core.losses import EDMLoss, FlowLoss, NCSNLoss, SDELoss
from diffusionlab.nn.unet import Unet
from diffusionlab.core.sde import SubVPSDE, VESDE, VPSDE
from diffusionlab.training import Trainer, tiny_config
from oracles import GaussianOracle

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
ORACLE = GaussianOracle(torch.tensor([0.3, -0.2, 0.0, 0.5], dtype=F64), torch.tensor([0.1, 0.4, 1.0, 0.25], dtype=F64))


def _col(v, x):
    return v.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


# ------------------------------------------------------------------ analytic "networks"
class SDENet(torch.nn.Module):
    """Sees (x_t, 999 t) of an SDE and returns the exact eps / x0 / v / score of Gaussian data,
    computed from the SDE's marginal (not from the adapter's coefficients)."""

    def __init__(self, sde, objective, oracle=ORACLE, shift=0.0):
        super().__init__()
        self.sde, self.objective, self.oracle, self.shift = sde, objective, oracle, shift

    def forward(self, x_t, c_noise):
        t = c_noise.to(F64) / 999
        m, s = (_col(v, x_t) for v in self.sde.marginal(t))
        x0 = self.oracle(x_t / m, (s / m).flatten())
        eps = (x_t - m * x0) / s
        norm = (m ** 2 + s ** 2).sqrt()
        out = {"eps": eps, "x0": x0, "v": (m * eps - s * x0) / norm, "score": -eps / s}[self.objective]
        return out + self.shift


class EDMNet(torch.nn.Module):
    """Exact F of Karras et al. 2022 Table 1 for Gaussian data, from the table's formulas."""

    def __init__(self, sigma_data=0.5, oracle=ORACLE, shift=0.0):
        super().__init__()
        self.sd, self.oracle, self.shift = sigma_data, oracle, shift

    def forward(self, x_in, c_noise):
        sigma = (4 * c_noise.to(F64)).exp()
        s = _col(sigma, x_in)
        x = x_in * (s ** 2 + self.sd ** 2).sqrt()                         # undo c_in
        c_skip = self.sd ** 2 / (s ** 2 + self.sd ** 2)
        c_out = s * self.sd / (s ** 2 + self.sd ** 2).sqrt()
        return (self.oracle(x, sigma) - c_skip * x) / c_out + self.shift


class FlowNet(torch.nn.Module):
    """The exact flow-matching velocity E[eps - x0 | x_t] of Gaussian data at flow time
    t = c_noise / 999, from x_t = (1 - t) x0 + t eps alone (Gaussian conditioning; no sigma-space
    formula)."""

    def __init__(self, oracle=ORACLE, shift=0.0):
        super().__init__()
        self.oracle, self.shift = oracle, shift

    def forward(self, x_t, c_noise):
        t = _col(c_noise.to(F64) / 999, x_t)
        mu, var = self.oracle.mu, self.oracle.var
        total = (1 - t) ** 2 * var + t ** 2                      # Var[x_t]
        resid = x_t - (1 - t) * mu
        x0 = mu + (1 - t) * var / total * resid                  # E[x0 | x_t]
        eps = t / total * resid                                  # E[eps | x_t]
        return eps - x0 + self.shift


class NCSNNet(torch.nn.Module):
    """sigma * score of Gaussian data at the sigma encoded by the ladder label."""

    def __init__(self, sigma_min, sigma_max, oracle=ORACLE, shift=0.0):
        super().__init__()
        self.lo, self.hi, self.oracle, self.shift = sigma_min, sigma_max, oracle, shift

    def forward(self, x, c_noise):
        sigma = self.lo * (c_noise.to(F64) / 999 * math.log(self.hi / self.lo)).exp()
        s = _col(sigma, x)
        return s * (self.oracle(x, sigma) - x) / s ** 2 + self.shift


def _points(sigma, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ORACLE.mu + torch.randn(n, 4, generator=g, dtype=F64) * math.sqrt(1 + sigma ** 2)


def _check_equals_oracle(den, sigmas):
    for sigma in sigmas:
        s = torch.full((8,), sigma, dtype=F64)
        x = _points(sigma)
        assert torch.allclose(den(x, s), ORACLE(x, s), rtol=1e-5, atol=1e-5), sigma


# ------------------------------------------------------------------ adapters == oracle
@pytest.mark.parametrize("objective", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("name", sorted(SDES))
def test_sde_denoiser_equals_the_oracle(name, objective):
    sde = SDES[name]
    den = SDEDenoiser(SDENet(sde, objective), sde, objective)
    _check_equals_oracle(den, [den.sigma_min * 3, 0.05, 0.7, 2.0, 20.0, den.sigma_max])


def test_edm_denoiser_equals_the_oracle():
    den = EDMDenoiser(EDMNet(0.5))
    _check_equals_oracle(den, [0.002, 0.03, 0.5, 3.0, 80.0])


def test_edm_preconditioning_is_table_1():
    s = torch.tensor([0.002, 0.5, 80.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = EDMPrecond(0.5)(s)
    assert torch.allclose(c_skip, 0.25 / (s ** 2 + 0.25))
    assert torch.allclose(c_out, s * 0.5 / (s ** 2 + 0.25).sqrt())
    assert torch.allclose(c_in, 1 / (s ** 2 + 0.25).sqrt())
    assert torch.allclose(c_noise, s.log() / 4)


def test_ncsn_denoiser_equals_the_oracle_and_scores():
    den = NCSNDenoiser(NCSNNet(0.01, 50.0), 0.01, 50.0, levels=30)
    _check_equals_oracle(den, [0.01, float(den.ladder[7]), 0.9, 50.0])
    x, s = _points(2.0), torch.full((8,), 2.0, dtype=F64)
    assert torch.allclose(den.score(x, s), (ORACLE(x, s) - x) / 4.0, atol=1e-10)


def test_ladder_is_geometric_and_sized_by_technique_2():
    lad = geometric_ladder(50.0, 0.01, 126)
    assert lad.dtype == F64 and lad[0] == pytest.approx(50) and lad[-1] == pytest.approx(0.01)
    ratios = lad[:-1] / lad[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert ncsn_levels_for(1024) == 126 and ncsn_levels_for(3072) == 220
    assert ncsn_levels_for(64) < ncsn_levels_for(1024)


class _Half(torch.nn.Module):
    """A network whose output is half its input, whatever the noise level."""

    def forward(self, x, t):
        return 0.5 * x


def test_process_attributes():
    from diffusionlab.core.sampling import DEFAULT_GRIDS, DEFAULT_SAMPLING
    vp = SDEDenoiser(torch.nn.Identity(), VPSDE())
    assert (vp.process, vp.info.default_schedule, vp.info.default_sampler) == ("vp", "karras", None)
    # a VP model declares no sampler of its own: it is sampled with its kind's measured default
    half = SDEDenoiser(_Half(), VPSDE())
    own, meta = dl.sample(half, (2, 4), seed=0, return_info=True)
    name, steps = DEFAULT_SAMPLING["sde_vp"]
    grid = DEFAULT_GRIDS["sde_vp"].get(name, "karras")
    assert torch.equal(own, dl.sample(half, (2, 4), sampler=name, steps=steps, schedule=grid, seed=0))
    assert meta["nfe"] == dl.SAMPLERS[name].count_nfe(steps)
    assert not torch.equal(own, dl.sample(half, (2, 4), sampler="euler_ancestral", steps=steps, seed=0))
    assert vp.prior_std(10.0) == pytest.approx(math.sqrt(101))
    assert SDEDenoiser(torch.nn.Identity(), VESDE()).prior_std(10.0) == 10.0
    assert SDEDenoiser(torch.nn.Identity(), SubVPSDE()).process == "subvp"
    edm = EDMDenoiser(torch.nn.Identity())
    assert (edm.process, edm.sigma_min, edm.sigma_max, edm.default_schedule, edm.info.default_sampler,
            edm.info.default_steps, edm.prior_std(80.0)) == ("edm", 0.002, 80.0, "karras", None, None, 80.0)
    half = EDMDenoiser(_Half())
    own, meta = dl.sample(half, (2, 4), seed=0, return_info=True)        # the measured default of its kind
    name, steps = DEFAULT_SAMPLING["edm"]
    assert torch.equal(own, dl.sample(half, (2, 4), sampler=name, steps=steps, seed=0))
    # the paper's sampler is one call away: Heun, 18 steps (35 NFE) on the rho-7 grid
    assert dl.sample(half, (2, 4), sampler="heun", steps=18, schedule="karras", seed=0, return_info=True)[1]["nfe"] == 35
    ncsn = NCSNDenoiser(torch.nn.Identity(), levels=100)
    assert (ncsn.process, ncsn.default_schedule, ncsn.default_sampler, ncsn.default_steps) == \
        ("ncsn", "ladder", "annealed_langevin", 100)
    assert len(ncsn.ladder) == 100 and ncsn.sigma_max == 50.0 and ncsn.prior_std(50.0) == 50.0
    assert DiscreteDenoiser.process == "ddpm"


# ------------------------------------------------------------------ losses at the optimum
def _gaussian_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = ORACLE.mu + ORACLE.var.sqrt() * torch.randn(n, 4, generator=g, dtype=F64)
    return x0, torch.randn(n, 4, generator=g, dtype=F64)


def _min_loss(loss_fn, sigma):
    """Expected loss of the optimal net at sigma: lambda_D E||D* - x0||^2 = lambda_D * posterior var."""
    s = torch.tensor([sigma], dtype=F64)
    post = (ORACLE.var * sigma ** 2 / (ORACLE.var + sigma ** 2)).mean()
    return float(loss_fn.x0_weight(s)[0] * post)


LOSS_CASES = [
    ("vp-eps", lambda: SDELoss(VPSDE(), "eps"), lambda sh: SDENet(VPSDE(), "eps", shift=sh)),
    ("vp-v-likelihood", lambda: SDELoss(VPSDE(), "v", likelihood_weighting=True),
     lambda sh: SDENet(VPSDE(), "v", shift=sh)),
    ("subvp-x0", lambda: SDELoss(SubVPSDE(), "x0"), lambda sh: SDENet(SubVPSDE(), "x0", shift=sh)),
    ("ve-score", lambda: SDELoss(VESDE(), "score"), lambda sh: SDENet(VESDE(), "score", shift=sh)),
    ("edm", lambda: EDMLoss(0.5), lambda sh: EDMNet(0.5, shift=sh)),
    ("ncsn", lambda: NCSNLoss(geometric_ladder(50.0, 0.01, 30)), lambda sh: NCSNNet(0.01, 50.0, shift=sh)),
    ("flow", lambda: FlowLoss(), lambda sh: FlowNet(shift=sh)),
    ("flow-shift3", lambda: FlowLoss(shift=3.0), lambda sh: FlowNet(shift=sh)),
]


@pytest.mark.parametrize("case", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_loss_of_the_exact_net_is_the_posterior_variance_minimum(case):
    _, make_loss, make_net = case
    loss_fn = make_loss()
    x0, eps = _gaussian_batch(20000, 1)
    for sigma in (0.05, 0.8, 6.0):
        s = torch.full((len(x0),), sigma, dtype=F64)
        best = loss_fn(make_net(0.0), x0, sigma=s, eps=eps)
        assert best.shape == (len(x0),)
        assert best.mean().item() == pytest.approx(_min_loss(loss_fn, sigma), rel=0.04), sigma
        assert loss_fn(make_net(0.05), x0, sigma=s, eps=eps).mean() > best.mean()


def test_edm_loss_has_unit_effective_weight_and_lognormal_sigmas():
    loss_fn = EDMLoss(0.5)
    x0 = torch.zeros(4000, 4, dtype=F64)
    sigma, _ = loss_fn.draw(x0, torch.Generator().manual_seed(0))
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.06)
    assert sigma.log().std().item() == pytest.approx(1.2, rel=0.05)
    c_out = EDMPrecond(0.5)(sigma)[1]
    assert torch.allclose(loss_fn.x0_weight(sigma) * c_out ** 2, torch.ones_like(sigma))


def test_sde_and_ncsn_losses_draw_their_noise_levels():
    x0 = torch.zeros(3000, 4)
    for sde in SDES.values():
        sigma, _ = SDELoss(sde).draw(x0, torch.Generator().manual_seed(0))
        t = sde.t_of_sigma(sigma)
        assert t.min() >= sde.eps_t - 1e-9 and t.max() <= 1 + 1e-9
        assert t.mean().item() == pytest.approx((1 + sde.eps_t) / 2, abs=0.03)
    lad = geometric_ladder(50.0, 0.01, 10)
    sigma, _ = NCSNLoss(lad).draw(x0, torch.Generator().manual_seed(0))
    assert set(sigma.tolist()) == set(lad.tolist())
    a = SDELoss(VPSDE()).draw(x0, torch.Generator().manual_seed(5))
    b = SDELoss(VPSDE()).draw(x0, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------ training end to end
PROCS = sorted(PROCESSES)  # the registry walk: every process trains, saves, resumes, loads and samples
DIGITS = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]
DENOISERS = {"ddpm": DiscreteDenoiser, "vp": SDEDenoiser, "subvp": SDEDenoiser, "ve": SDEDenoiser, "edm": EDMDenoiser,
             "ncsn": NCSNDenoiser, "flow": FlowDenoiser}


@pytest.mark.parametrize("process", PROCS)
def test_train_resume_load_and_sample_every_process(process, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *DIGITS, "--process", process, "--steps", "2", "--out", str(run)]) == 0
    cfg = json.loads((run / "checkpoints" / "step-00000002" / "config.json").read_text())
    assert cfg["kind"] == PROCESSES[process].kind and cfg["diffusion"]["process"] == process
    resumed = Trainer(config=tiny_config(out_dir=str(run), max_steps=3, progress=False), resume=True)
    assert resumed.cfg.diffusion.process == process and resumed.step == 2
    resumed.train()
    den = load_denoiser(run)
    assert type(den) is DENOISERS[process] and den.process == process and den.info.image_shape == (1, 8, 8)
    extra = {"schedule": "karras"} if process == "ncsn" else {}   # the 'ladder' grid belongs to dl.sample
    x = dl.sample(den, (3, 1, 8, 8), sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0), **extra)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    argv = ["sample", "--ckpt", str(run), "--n", "2", "--steps", "3", "--sampler", "ddim",
            "--out", str(tmp_path / "s.png")] + (["--schedule", "karras"] if process == "ncsn" else [])
    assert main(argv) == 0 and (tmp_path / "s.png").is_file()


def test_trainer_api_with_a_continuous_diffusion_and_grids(tmp_path):
    net = Unet(dim=8, dim_mults=(1, 2), channels=1, mid_attn=False, groups=4, patch_size=1)
    diffusion = ContinuousDiffusion(net, image_size=8, process="edm", sigma_data=0.6)
    t = Trainer(diffusion, results_folder=str(tmp_path), data="digits", train_batch_size=8, train_num_steps=2,
                save_and_sample_every=2, num_samples=4, val_every=0, sample_steps=3, n_val=16, num_threads=1,
                progress=False)
    assert t.cfg.diffusion.process == "edm" and t.cfg.diffusion.sigma_data == 0.6
    t.train()
    assert (tmp_path / "samples" / "step-00000002.png").is_file()
    back = load_diffusion(tmp_path)
    assert isinstance(back, ContinuousDiffusion) and back.process_config.sigma_data == 0.6
    img = back.sample(batch_size=2, sampler="ddim", steps=3)
    assert img.shape == (2, 1, 8, 8) and 0 <= img.min() and img.max() <= 1
    assert torch.isfinite(back(torch.rand(4, 1, 8, 8)))


def test_checkpoints_without_a_process_load_as_ddpm(tmp_path):
    assert main(["train", *DIGITS, "--steps", "1", "--out", str(tmp_path)]) == 0
    path = tmp_path / "checkpoints" / "step-00000001" / "config.json"
    cfg = json.loads(path.read_text())
    assert cfg["diffusion"].pop("process") == "ddpm"
    cfg["train"]["diffusion"].pop("process")
    path.write_text(json.dumps(cfg))
    (path.parent / "manifest.json").unlink()  # such checkpoints were written before manifests
    assert type(load_denoiser(tmp_path)) is DiscreteDenoiser
    assert Trainer(config=tiny_config(out_dir=str(tmp_path), progress=False), resume=True).cfg.diffusion.process == "ddpm"


@pytest.mark.parametrize("argv,msg", [
    (["--process", "edm", "--objective", "eps"], "--objective applies to --process ddpm / vp / subvp / ve"),
    (["--process", "vp", "--timesteps", "10"], "--timesteps applies to --process ddpm"),
    (["--beta-min", "0.2"], "--beta-min applies to --process vp / subvp, not ddpm"),
    (["--process", "ncsn", "--sigma-data", "0.5"], "--sigma-data applies"),
    (["--objective", "score"], "--objective score applies"),
])
def test_process_flag_errors_are_one_line(argv, msg, capsys, tmp_path):
    assert main(["train", *DIGITS, "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "hint:" in err and "Traceback" not in err


def test_config_rejects_ddpm_options_for_continuous_processes(tmp_path):
    import dataclasses

    cfg = tiny_config(out_dir=str(tmp_path), data="digits", image_size=8)
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, process="ve", min_snr_gamma=5.0))
    with pytest.raises(ValueError, match="min_snr_gamma applies to process ddpm"):
        Trainer(config=cfg)
