"""``diffusionlab eval``: sample quality of a checkpoint or of images (FD/FID, KID,
precision/recall, density/coverage, the digit classifier's readings), or bits/dim (--nll)."""
from __future__ import annotations

import json
from pathlib import Path

from ...core.likelihood import DECODERS
from ...errors import UserError
from ...evaluation.suite import EXTRACTORS, METRICS
from . import options


def register(sub) -> None:
    p = sub.add_parser("eval", help="sample quality (FD/FID, KID, precision/recall, density/coverage) or "
                                    "bits/dim (--nll)")
    options.add_checkpoint(p, ema=False, help="run or checkpoint directory (samples are drawn from it)",
                           required=False)
    p.add_argument("--images", help="or images: a .npy / .npz in [-1, 1] shaped [N, C, H, W], or a folder of "
                                    "image files")
    p.add_argument("--n", type=int, default=None, help="samples to draw (1000), or held-out images for --nll (200)")
    options.add_sampling(p, batch_size=250)
    options.add_sampler_knobs(p, variance_help="DDPM sampling variance; with --nll vlb: the model's "
                                               "p(x_{t-1} | x_t) variance")
    options.add_guidance(p)
    options.add_precision(p, help="sampling precision (likelihoods always run in fp32)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    _add_quality(p.add_argument_group("sample quality (FD/FID, KID, precision/recall, density/coverage)"))
    _add_nll(p.add_argument_group("likelihood (--nll): bits/dim of held-out data instead of sample quality"))
    p.set_defaults(run=run, param_flags=options.param_flags(p, {"t_samples": "--vlb-t", "n_probes": "--probes",
                                                                "spec": "--extractor", "weights": "--inception-weights"}))


def _add_quality(q) -> None:
    q.add_argument("--extractor", choices=tuple(EXTRACTORS), default=None,
                   help="feature network: digits (greyscale default) or inception (pool3, RGB default)")
    q.add_argument("--inception-weights", default=None,
                   help="path of pt_inception-2015-12-05-6726825d.pth (or $DIFFUSIONLAB_INCEPTION_WEIGHTS)")
    q.add_argument("--reference", default=None,
                   help="real data: mnist | digits | a folder (its held-out split; default: the checkpoint's data)")
    options.add_digits(q)
    q.add_argument("--metrics", default=",".join(METRICS), help=f"comma list of {', '.join(METRICS)}")
    q.add_argument("--kid-subsets", type=int, default=100)
    q.add_argument("--kid-subset-size", type=int, default=1000)
    q.add_argument("--image-size", type=int, default=None, help="--images given as a folder: resize to this")


def _add_nll(g) -> None:
    g.add_argument("--nll", choices=["vlb", "ode"], default=None,
                   help="vlb: the variational bound; ode: exact log-likelihood through the probability-flow ODE")
    g.add_argument("--data", default=None,
                   help="held-out data: default the checkpoint's dataset (its held-out split); or mnist | digits | "
                        "a folder")
    g.add_argument("--vlb-t", type=int, default=None,
                   help="vlb: stratified estimate with this many t per image (default: all T terms)")
    g.add_argument("--decoder", choices=DECODERS, default="discretized",
                   help="vlb: L_0 decoder (discretized: 8-bit data, bits/dim; gaussian: continuous data)")
    g.add_argument("--probe", choices=["rademacher", "gaussian"], default="rademacher", help="ode: Hutchinson probe")
    g.add_argument("--probes", type=int, default=1, help="ode: probes per image")
    g.add_argument("--exact-divergence", action="store_true",
                   help="ode: exact Jacobian trace (one backward per dimension)")
    g.add_argument("--rtol", type=float, default=1e-5, help="ode solver tolerance")
    g.add_argument("--atol", type=float, default=1e-5, help="ode solver tolerance")
    g.add_argument("--nll-batch", type=int, default=100, help="images per batch (ode: integrated as one system)")


def run(a) -> int:
    if bool(a.ckpt) == bool(a.images):
        raise UserError("give exactly one of --ckpt or --images")
    if a.images and a.lora:
        raise UserError("--lora adapts the model of --ckpt; --images are measured as they are")
    m = _nll(a) if a.nll else _quality(a)
    if a.json:
        Path(a.json).write_text(json.dumps(m, indent=2))
    return 0


def _samples(a):
    """(images, reference data): ``--images`` read, or n samples drawn from ``--ckpt``."""
    from ...core.sampling import sample_many
    from ...models.loading import recorded_config
    from .common import load

    n = 1000 if a.n is None else a.n
    if a.images:
        return read_images(a.images, a.image_size), a.reference or "mnist"
    from ...core.protocol import info_of
    from ...models.latent import to_pixels

    m = load(a)
    x = sample_many(m.den, m.shape, n, m.choice.sampler, m.choice.steps, seed=a.seed,
                    batch_size=a.batch_size, cond=m.conditioning(n), schedule=a.schedule, **m.knobs)
    x = to_pixels(info_of(m.den), x)  # a latent model's samples are measured as pixels
    reference = a.reference or recorded_config(a.ckpt).get("train", {}).get("data", "mnist")
    return x, reference


def _quality(a) -> dict:
    """Sample-quality metrics against the reference data's held-out split (and its floor)."""
    import torch

    from ...data.datasets import load_dataset
    from ...evaluation import digit_metrics, format_digit_metrics
    from ...evaluation.suite import format_image_metrics, get_extractor, image_metrics, reference_features

    x, reference = _samples(a)
    channels, size = x.shape[1], x.shape[-1]
    name = a.extractor or ("digits" if channels == 1 else "inception")
    if name == "digits" and channels != 1:
        raise UserError("the digit extractor takes greyscale images: use --extractor inception for RGB")
    ex = get_extractor(name, **({"weights": a.inception_weights} if name == "inception" else {}))
    m = {}
    if name == "digits":  # the digit classifier's own readings (confidence, classes, copies)
        m.update(digit_metrics(x, ex.model))
        print(format_digit_metrics(m))
    ref = reference_features(ex, reference, "heldout", size, channels, classes=a.digits)
    train = load_dataset(reference, size, channels, classes=a.digits)[0]
    floor = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:len(x)]]
    fm = image_metrics(x, ex, ref, floor=floor, metrics=tuple(k for k in a.metrics.split(",") if k),
                       kid_subsets=a.kid_subsets, kid_subset_size=a.kid_subset_size)
    m.update({("feature_" + k if k in m else k): v for k, v in fm.items()})
    m["reference"] = reference if a.digits is None else f"{reference}, classes {','.join(map(str, a.digits))}"
    print(format_image_metrics(fm))
    return m


def read_images(spec: str, image_size: int | None):
    """Images in [-1, 1], [N, C, H, W], from a .npy / .npz (array 'images' or the first one) or
    a folder of image files (then resized to --image-size, default 32)."""
    import numpy as np
    import torch

    p = Path(spec)
    if p.is_dir():
        return _read_folder(p, image_size or 32)
    if not p.is_file():
        raise UserError(f"no such file or folder: {spec}", param="images")
    from ...data.images import read_image_array

    return read_image_array(p, "images", stack_3d=True)


def _read_folder(p: Path, size: int):
    from PIL import Image

    from ...data.folder import ImageFolderDataset

    def grey(path) -> bool:
        try:
            with Image.open(path) as im:
                return im.mode in ("L", "1", "I;16", "LA")
        except Exception:  # not an image: the dataset reports it
            return False

    files = [f for f in p.rglob("*") if f.is_file()]
    channels = 1 if files and all(grey(f) for f in files[:20]) else 3
    return ImageFolderDataset(p, size, channels=channels, allow_upscale=True).load_all()


def _heldout(a, ckpt_cfg: dict, shape):
    """8-bit held-out images for the likelihood: the checkpoint's own data split by default."""
    import torch

    from ...core.likelihood import quantize_8bit
    from ...data.datasets import load_dataset

    train = ckpt_cfg.get("train", {})
    data = a.data or train.get("data", "mnist")
    _, val = load_dataset(data, shape[1], shape[0], train.get("val_fraction", 0.05), train.get("seed", 0), a.digits)
    if tuple(val.shape[1:]) != tuple(shape):
        raise UserError(f"data {data!r} gives images {tuple(val.shape[1:])}, the model takes {tuple(shape)}")
    if len(val) < 2:
        raise UserError(f"data {data!r} has {len(val)} held-out image(s); bits/dim need at least 2")
    n = min(a.n or 200, len(val))
    return quantize_8bit(val[:n].to(torch.float32)), data


def _nll(a) -> dict:
    """``eval --nll vlb|ode``: bits/dim of held-out data (core.likelihood)."""
    from ...models.loading import load_denoiser, recorded_config

    if a.images:
        raise UserError("--nll measures a model on held-out data: give --ckpt, not --images")
    if a.nll == "vlb" and a.vlb_t is not None and a.vlb_t < 1:
        raise UserError("--vlb-t must be >= 1")
    if a.nll == "ode" and a.probes < 1:
        raise UserError("--probes must be >= 1")
    den = load_denoiser(a.ckpt, use_ema=True, autoencoder=a.autoencoder,  # fp32: likelihoods need the precision
                        **options.checkpoint_args(a))
    codec = den.info.latent
    x, data = _heldout(a, recorded_config(a.ckpt), codec.pixel_shape if codec else den.info.image_shape)
    if codec is not None:  # a latent model's likelihood is that of the held-out images' latents
        if a.nll == "vlb":
            raise UserError("the VLB's decoder term models 8-bit pixels; a latent model's likelihood is that of "
                            "continuous latents: use --nll ode", param="nll")
        x = codec.encode(x)
        data = f"{data}, encoded by the autoencoder: bits/dim of the latents {tuple(codec.latent_shape)}, not pixels"
    m = _bits_per_dim(a, den, x)
    m["data"] = data
    what = (f"VLB over {m['T']} steps ({'all terms' if m['t_samples'] == m['T'] else str(m['t_samples']) + ' stratified t per image'})"
            if a.nll == "vlb" else f"probability-flow ODE ({m['nfe']} right-hand sides)")
    print(f"bits/dim = {m['bits_per_dim']:.4f} +- {m['stderr']:.4f} (standard error over {m['n']} held-out "
          f"images of {data}; {what})")
    return m


def _bits_per_dim(a, den, x) -> dict:
    from ...core.likelihood import ode_bits_per_dim, vlb

    if a.nll == "vlb":
        return vlb(den, x, t_samples=a.vlb_t, variance=a.variance or "auto", decoder=a.decoder,
                   batch_size=a.nll_batch, seed=a.seed, progress=True).summary()
    return ode_bits_per_dim(den, x, batch_size=a.nll_batch, seed=a.seed, progress=True, rtol=a.rtol, atol=a.atol,
                            exact_divergence=a.exact_divergence, probe=a.probe, n_probes=a.probes).summary()
