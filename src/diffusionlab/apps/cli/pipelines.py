"""``diffusionlab img2img | inpaint | upscale``: the image pipelines, on inputs read by
``pipelines.inputs.load_inputs``, with the sampling and guidance flags of ``sample``."""
from __future__ import annotations

from ...errors import UserError
from . import options

# library parameters of the pipelines -> their flags
PARAMS = {"spec": "--input", "images": "--input", "low": "--input", "jump_length": "--jump-length"}
INPUT_HELP = ("an image file, a folder of images, or a .npy batch (float32 [N, C, H, W] in [-1, 1], what "
              "`sample --npy` writes); ")


def _common(p, size: str = "the model's size; 28x28 inputs to a 32x32 model are padded like MNIST") -> None:
    options.add_checkpoint(p)
    p.add_argument("--input", required=True, help=INPUT_HELP + size)
    options.add_sampling(p, batch_size=256, seed_help="input i uses seed stream i of this seed")
    options.add_output(p, "out.png", what="outputs")
    options.add_guidance(p)
    options.add_precision(p)


def _finish(p, run) -> None:
    p.set_defaults(run=run, param_flags=options.param_flags(p, PARAMS))


def register(sub) -> None:
    _register_img2img(sub)
    _register_inpaint(sub)
    _register_upscale(sub)


def _register_img2img(sub) -> None:
    p = sub.add_parser("img2img", help="SDEdit: noise the inputs part of the way and denoise them back",
                       description="img2img by SDEdit (Meng et al. 2022): with N steps on the model's grid, the input "
                                   "is noised to the sigma where the last int(S * N) steps begin (floor, as diffusers), and those steps "
                                   "run. --strength 0 returns the input, 1 ignores it.")
    _common(p)
    p.add_argument("--strength", type=float, required=True, metavar="S", help="0..1")
    _finish(p, run_img2img)


def _register_inpaint(sub) -> None:
    from ...pipelines.inpaint import DEFAULT_JUMP, DEFAULT_RECONSTRUCTION, DEFAULT_RESAMPLE

    p = sub.add_parser("inpaint", help="fill a masked region with any model (RePaint)",
                       description="Inpainting by RePaint (Lugmayr et al. 2022): the known region is replaced by the "
                                   "input re-noised to the current sigma at every step, and every J steps the image "
                                   "is noised back J steps and re-denoised, R passes in all; reconstruction "
                                   "guidance pulls the denoised image toward the known pixels. The known region of "
                                   "the output equals the input exactly.")
    _common(p)
    p.add_argument("--mask", required=True,
                   help="left|right|top|bottom (that half is filled), a rectangle x0,y0,x1,y1 (half-open model "
                        "pixels, x = column), or a PNG of the model's size (white = fill)")
    p.add_argument("--jump-length", type=int, default=DEFAULT_JUMP, metavar="J",
                   help=f"RePaint jump length (default {DEFAULT_JUMP}; the paper's 10)")
    p.add_argument("--resample", type=int, default=DEFAULT_RESAMPLE, metavar="R",
                   help=f"RePaint passes per jump (default {DEFAULT_RESAMPLE}; 1 = no resampling; the paper's 10): "
                        "the network runs about R x steps times per input. Measured on 32x32 digits, 16 steps, a "
                        "2-core AMX CPU (bench/RESULTS_pipelines.md), seconds per 100 inputs: J 5 R 3 with the "
                        "default reconstruction guidance about 9 (without: 5), R 1 about 3 (without: 2), J 10 R 10 "
                        "about 12-15 without")
    p.add_argument("--reconstruction", type=float, default=DEFAULT_RECONSTRUCTION, metavar="W",
                   help=f"reconstruction guidance weight (default {DEFAULT_RECONSTRUCTION:g}; 0 = RePaint alone): "
                        "pulls the denoised image toward the known pixels through the network's gradient, which "
                        "makes the fill agree with the known region (held-out digit agreement with J 5 R 3, "
                        "left / right half masked: 0.70 / 0.75 without, 0.84 / 0.90 with; "
                        "bench/RESULTS_pipelines.md) at one extra backward pass per step; off below sigma 0.5")
    _finish(p, run_inpaint)


def _register_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolution with a model trained with --cond image --task superres",
                       description="Super-resolution by image conditioning (SR3, Saharia et al. 2021): each "
                                   "low-resolution input (the checkpoint's --lowres size, e.g. 16x16) is bicubic-"
                                   "upsampled, concatenated to the model's noisy input, and the model samples the "
                                   "full-resolution image.")
    _common(p, "the checkpoint's low-resolution size (16x16 for --lowres 16); with --degrade, full-size images "
               "(28x28 padded like MNIST) downsampled first")
    p.add_argument("--degrade", action="store_true",
                   help="the inputs are full-size images: area-downsample them to the low resolution first "
                        "(to compare an upscaled digit with its original)")
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="draw K samples per input and output their mean (sharper with 1, closer to the "
                        "original in PSNR with more)")
    _finish(p, run_upscale)


def _run(a, fn, size=None, hint: str = "") -> int:
    """Load, read ``--input``, run ``fn(loaded, inputs)`` and write the outputs."""
    import torch

    from ...core.protocol import info_of
    from ...pipelines.inputs import load_inputs
    from .common import load, save_outputs

    m = load(a)
    codec = info_of(m.den).latent  # a latent model reads and writes pixels (pipelines.latent)
    x = load_inputs(a.input, codec.pixel_shape if codec is not None else m.shape, size(m.den) if size else None, hint)
    with torch.no_grad():
        out = fn(m, x)
    save_outputs(out, a.out, a.npy)
    print(f"wrote {a.out}" + (f", {a.npy}" if a.npy else "") + f" ({len(out)} image(s))")
    return 0


def run_img2img(a) -> int:
    from ...pipelines.img2img import img2img

    if not 0.0 <= a.strength <= 1.0:
        raise UserError(f"--strength is in [0, 1] (0 returns the input, 1 ignores it), got {a.strength:g}")
    def edit(m, x):
        from ...core.protocol import info_of
        from ...pipelines.latent import in_latent_space

        def run(images):
            return img2img(m.den, images, a.strength, m.choice.steps, m.choice.sampler, m.conditioning(len(images)),
                           a.seed, a.batch_size)
        codec = info_of(m.den).latent
        return run(x) if codec is None else in_latent_space(codec, x, run)

    return _run(a, edit)


def run_inpaint(a) -> int:
    from ...pipelines.inpaint import inpaint, parse_mask

    def fill(m, x):
        from ...core.protocol import info_of
        from ...pipelines.latent import inpaint_in_latent_space

        def run(images, mask):
            return inpaint(m.den, images, mask, m.choice.steps, m.choice.sampler, m.conditioning(len(images)), a.seed,
                           a.jump_length, a.resample, a.batch_size, reconstruction=a.reconstruction)
        codec = info_of(m.den).latent
        if codec is None:
            return run(x, parse_mask(a.mask, m.shape))
        return inpaint_in_latent_space(codec, x, parse_mask(a.mask, codec.pixel_shape), run)

    return _run(a, fill)


def run_upscale(a) -> int:
    from ...data.degrade import downsample
    from ...pipelines.upscale import lowres_size, upscale

    def sr(m, x):
        low = downsample(x, lowres_size(m.den)) if a.degrade else x
        return upscale(m.den, low, m.choice.steps, m.choice.sampler, a.seed, a.samples, a.batch_size)

    if a.degrade:
        return _run(a, sr)
    return _run(a, sr, size=lowres_size, hint=" (the low resolution; for full-size images add --degrade)")
