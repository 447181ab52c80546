"""Issue 13 before / after: runs the review's silent-failure bugs against whichever diffusionlab is
imported. Before: PYTHONPATH=OLD_CHECKOUT/src python bench/core_bugs_before_after.py; after: from
this checkout. Numbers go to bench/NOTES.md ("Core protocol")."""
import json, tempfile, sys, io, contextlib
from pathlib import Path
import numpy as np, torch
import diffusionlab as dl
print("code under test:", dl.__file__)
from diffusionlab.apps.cli import main
from diffusionlab.core.denoiser import DiscreteDenoiser
from diffusionlab.core.guidance import Clipped
from diffusionlab.core.schedules import DiscreteSchedule
D = ["--preset", "tiny", "--data", "digits", "--image-size", "8", "--threads", "1", "--no-progress"]
class Net(torch.nn.Module):
    channels, out_channels = 1, 2
    def forward(self, x, t, cond=None): return torch.cat([3 * x + 2.5, 0 * x + 0.3], 1)
den = DiscreteDenoiser(Net(), DiscreteSchedule.from_name("linear", 50), "x0")
x = torch.randn(2, 1, 4, 4); s = torch.full((2,), 2.0)
x0, _ = Clipped(den).denoise_with_variance(x, s)
print("1 wrapper bypassed on learned variance:", bool(x0.abs().max() > 1))
tmp = Path(tempfile.mkdtemp())
q = contextlib.redirect_stdout(io.StringIO())
with q: main(["train", *D, "--steps", "4", "--checkpoint-every", "2", "--out", str(tmp)])
with q: rc = main(["train", *D, "--steps", "4", "--seed", "5", "--out", str(tmp)])
print("2 second train without --resume exit code:", rc, "(0 = accepted silently)")
p = tmp / "checkpoints" / "step-00000004" / "model.safetensors"; b = p.read_bytes(); p.write_bytes(b[: len(b) // 2])
err = io.StringIO()
with q, contextlib.redirect_stderr(err): rc = main(["train", "--out", str(tmp), "--resume", "--steps", "8", "--no-progress"])
print("3 resume over truncated newest checkpoint exit code:", rc, "|", err.getvalue().strip().splitlines()[0][:150])
t2 = Path(tempfile.mkdtemp())
with q: main(["train", *D, "--steps", "1", "--out", str(t2)])
with q: main(["sample", "--ckpt", str(t2), "--n", "3", "--steps", "3", "--sampler", "ddpm", "--seed", "4", "--precision", "fp32", "--out", str(t2 / "s.png"), "--npy", str(t2 / "s.npy")])
cli = torch.from_numpy(np.load(t2 / "s.npy"))
try:
    from diffusionlab.core.sampling import sample_many
except ImportError:
    from diffusionlab.core.sampling import sample_many
many = sample_many(dl.load_denoiser(t2), (1, 8, 8), 3, "ddpm", 3, seed=4, progress=False)
print("4 same --seed, CLI vs eval/demo path equal:", bool(torch.allclose(cli.clamp(-1, 1), many.clamp(-1, 1), atol=1e-5)))
print("7 sample --npy range:", float(cli.min()), float(cli.max()), "(outside [-1, 1] = unclamped)")
