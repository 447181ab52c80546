"""Every registered sampler applies to every process: with the exact network of each process
(VP / sub-VP / VE SDE, EDM, NCSN, flow; the analytic nets of test_processes.py), each sampler run
through dl.sample on the process's own default grid reproduces Gaussian data."""
import pytest
import torch

import diffusionlab as dl
from diffusionlab.core.denoiser import EDMDenoiser, FlowDenoiser, NCSNDenoiser, SDEDenoiser
from diffusionlab.core.samplers import SAMPLERS
from diffusionlab.core.sde import SubVPSDE, VESDE, VPSDE
from oracles import GaussianConsistency, WithInfo
from test_processes import ORACLE, EDMNet, FlowNet, NCSNNet, SDENet

F64 = torch.float64


def make(process):
    if process in ("vp", "subvp", "ve"):
        sde = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}[process]
        return SDEDenoiser(SDENet(sde, "eps"), sde, "eps")
    if process == "edm":
        return EDMDenoiser(EDMNet())
    if process == "flow":
        return FlowDenoiser(FlowNet(), shift=3.0)
    return NCSNDenoiser(NCSNNet(0.01, 50.0), 0.01, 50.0, levels=100)


KNOBS = {"annealed_langevin": dict(n_steps_each=10), "pc": dict(snr=0.05)}


@pytest.mark.parametrize("process", ["vp", "subvp", "ve", "edm", "ncsn", "flow"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_samples_every_process(name, process):
    den = make(process)
    if SAMPLERS[name].consistency_model:  # a consistency model's sampler: the data's exact consistency function
        den = WithInfo(den.info, GaussianConsistency(ORACLE.mu, ORACLE.var))
    g = torch.Generator().manual_seed(0)
    steps = 100 if SAMPLERS[name].stochastic else 40
    out, info = dl.sample(den, (3000, 4), name, steps=steps, generator=g, return_info=True,
                          noise=torch.randn(3000, 4, generator=g, dtype=F64), **KNOBS.get(name, {}))
    assert torch.isfinite(out).all()
    assert info["sigmas"][-1] == 0 and info["nfe"] > 0
    assert torch.allclose(out.mean(0), ORACLE.mu, atol=0.06), out.mean(0)
    ratio = out.var(0) / ORACLE.var
    assert ((ratio - 1).abs() < 0.3).all(), ratio
