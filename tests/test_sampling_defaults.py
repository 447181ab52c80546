"""The measured sampling defaults (issue 23): every model kind maps to its table, the table covers
every fixed-NFE sampler, and each (kind, sampler) default grid runs and samples Gaussian data at
20 steps (40 for first-order, 200 for stochastic samplers) - exact denoisers behind the DenoiserInfo of one real model of each kind."""
import dataclasses
import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.denoiser import (DiscreteDenoiser, EDMDenoiser, FlowDenoiser, NCSNDenoiser,
                                        SDEDenoiser)
from diffusionlab.core.protocol import DenoiserInfo
from diffusionlab.core.sampling import DEFAULT_GRIDS, DEFAULT_SAMPLING, default_grid, model_kind, sampling_defaults
from diffusionlab.core.schedules import DiscreteSchedule
from diffusionlab.core.sde import SubVPSDE, VESDE, VPSDE
from oracles import GaussianConsistency, WithInfo

F64 = torch.float64
MU, VAR = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([0.05, 0.2], dtype=F64)


def _infos() -> dict[str, DenoiserInfo]:
    net = torch.nn.Identity()
    lin = DiscreteSchedule.from_name("linear", 1000)
    dens = {
        "vp_discrete": DiscreteDenoiser(net, lin, "eps"),
        "vp_ztsnr": DiscreteDenoiser(net, DiscreteSchedule.from_name("linear", 1000, zero_terminal_snr=True), "v"),
        "edm": EDMDenoiser(net), "sde_vp": SDEDenoiser(net, VPSDE()), "sde_ve": SDEDenoiser(net, VESDE()),
        "ncsn": NCSNDenoiser(net, levels=50), "flow": FlowDenoiser(net, shift=3.0),
    }
    return {"bare": DenoiserInfo(), **{k: d.info for k, d in dens.items()}}


INFOS = _infos()


class Exact:
    """The posterior mean of N(MU, diag VAR) data, declaring ``info``."""

    def __init__(self, info):
        self.info = info

    def __call__(self, x, sigma, cond=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        if bool(torch.isinf(s).any()):
            return MU.to(x.dtype).expand_as(x).clone()
        return MU + VAR / (VAR + s ** 2) * (x - MU)


def test_every_kind_has_its_tables_and_every_fixed_nfe_sampler_a_grid():
    assert {model_kind(i) for i in INFOS.values()} == set(INFOS) == set(DEFAULT_GRIDS)
    assert model_kind(SDEDenoiser(torch.nn.Identity(), SubVPSDE()).info) == "sde_vp"
    searched = {n for n, s in dl.SAMPLERS.items() if s.fixed_nfe and n not in ("pc", "annealed_langevin")}
    for kind, table in DEFAULT_GRIDS.items():
        assert set(table) == searched, kind
        if kind != "ncsn":
            assert DEFAULT_SAMPLING[kind][0] in dl.SAMPLERS
    # NCSN keeps its own sampler and ladder; a sampler outside the table runs the model's own grid
    assert sampling_defaults(INFOS["ncsn"]).sampler == "annealed_langevin"
    assert default_grid(INFOS["ncsn"], "annealed_langevin", 10) == "ladder"


def test_a_record_wins_over_the_kind_default():
    info = dataclasses.replace(INFOS["edm"], default_sampler="heun", default_steps=18)
    assert (sampling_defaults(info).sampler, sampling_defaults(info).steps) == ("heun", 18)
    assert sampling_defaults(INFOS["edm"]).sampler == DEFAULT_SAMPLING["edm"][0]


@pytest.mark.parametrize("kind", sorted(INFOS))
def test_every_default_grid_samples_the_data(kind):
    den = Exact(INFOS[kind])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 2, generator=g, dtype=F64)
    for name in sorted(DEFAULT_GRIDS[kind]):
        info = dl.SAMPLERS[name]  # first-order and stochastic samplers converge slowly: more steps
        steps = 200 if info.stochastic else 20 if info.order >= 2 else 40
        model = WithInfo(INFOS[kind], GaussianConsistency(MU, VAR)) if info.consistency_model else den
        x, meta = dl.sample(model, z.shape, name, steps=steps, noise=z, generator=torch.Generator().manual_seed(1),
                            return_info=True)
        grid = meta["sigmas"]
        assert grid[-1] == 0 and bool((grid[1:] <= grid[:-1]).all()), (kind, name)
        assert math.isinf(float(grid[0])) or float(grid[0]) <= INFOS[kind].finite_sigma_max() * (1 + 1e-9)
        assert torch.isfinite(x).all(), (kind, name)
        assert torch.allclose(x.mean(0), MU, atol=0.05), (kind, name, x.mean(0))
        assert ((x.var(0) / VAR - 1).abs() < 0.35).all(), (kind, name, x.var(0) / VAR)
