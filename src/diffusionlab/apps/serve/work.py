"""What the page computes, through the public API only: a generation (``conditioned`` +
``sample`` with its per-step callback, or the img2img / inpaint pipelines), the guidance view
of one kept step, the forward process, the prompt's tokens and the network's architecture.

A request is checked in full (``plan_*``) before it is queued, so a bad one is a 4xx at once
and never takes a place in the queue; ``run_plan`` then runs it in a worker, emitting one
``step`` event per sampler step (x_t and the predicted x0 as PNG data URLs, sigma, NFE so far)
and a ``done`` event with the final images. Nothing is written to disk: results live in the
job (``Job.result``) until the queue forgets it. A request's ``lora`` list applies LoRA adapters
of its checkpoint (``Catalog.load``); they appear in the command line (``--lora PATH:SCALE``)
and the PNG's parameters.
"""
from __future__ import annotations

import base64
import io
import json
import math
import shlex
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...core.protocol import DenoiserWrapper, info_of
from ...errors import UserError

MAX_BATCH = 16
MAX_NFE = 500
MAX_PROMPT = 1024
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_UPLOAD_SIDE = 1024
MAX_STEPS = 1000
MAX_LORA = 4               # LoRA adapters applied to one generation
EPS_RANGE = 3.0            # predicted noise is shown over [-3, 3]


# ---------------------------------------------------------------- pictures


def grid_array(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] as one uint8 picture (H', W') or (H', W', 3), ceil(sqrt(B)) a row."""
    from ...evaluation.viz import make_grid

    x = x.detach().float().cpu().clamp(-1, 1)
    nrow = max(1, int(math.ceil(math.sqrt(len(x)))))
    return make_grid(x, nrow=nrow, padding=1 if len(x) > 1 else 0)


def png_bytes(x: torch.Tensor, text: dict | None = None) -> bytes:
    """The grid of ``x`` as PNG; ``text``: tEXt chunks (the generation parameters)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = None
    if text:
        info = PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(grid_array(x)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x in variance-preserving coordinates, x / sqrt(1 + sigma^2) (x itself at sigma = inf)."""
    return x if not math.isfinite(sigma) else x / math.sqrt(1 + sigma ** 2)


def pixel_shape(p) -> tuple:
    """(C, H, W) of the pictures a plan's model makes: its latent model's decoded size, else its own."""
    codec = info_of(p.base).latent
    return tuple(codec.pixel_shape) if codec is not None else tuple(p.shape)


def shown(p, x: torch.Tensor) -> torch.Tensor:
    """What the page shows of a model-space tensor: decoded by a latent model's autoencoder."""
    from ...models.latent import to_pixels

    return to_pixels(info_of(p.base), x)


def _num(v: float):
    """A float for JSON: inf as the string 'inf'."""
    v = float(v)
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


# ---------------------------------------------------------------- requests


@dataclass
class Plan:
    """A checked request, ready to run: what ``run_plan`` needs and what the page is told."""

    kind: str                     # generate | img2img | inpaint
    checkpoint: str
    base: object                  # the checkpoint's denoiser
    guided: object                # with CFG / autoguidance
    conditioning: object          # pipelines.conditioning.Conditioning
    sampler: str
    steps: int
    guidance: float
    seed: int
    batch: int
    shape: tuple
    nfe_planned: int | None
    params: dict                  # what the user asked, as stored in the PNG and shown
    command: str
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    strength: float | None = None
    negative: object = None       # the negative condition (one sample) of CFG, None: the null one
    lora: tuple = ()              # (adapter id, scale) applied to ``base``
    meta: dict = field(default_factory=dict)


def _conditioned(base, req: dict):
    from ...pipelines.conditioning import conditioned

    kind = info_of(base).cond.kind
    asked = {k: req.get(k) for k in ("class", "negative_class", "prompt", "negative_prompt")}
    if kind == "none":  # an empty field of the page means "not asked"
        asked = {k: (None if v in ("", None) else v) for k, v in asked.items()}
    for k in ("prompt", "negative_prompt"):
        if isinstance(asked[k], str) and len(asked[k]) > MAX_PROMPT:
            raise UserError(f"a prompt of {len(asked[k])} characters; at most {MAX_PROMPT} are accepted", param=k)
    guidance = req.get("guidance")
    interval = req.get("guidance_interval")
    try:
        return conditioned(base, class_=asked["class"], prompt=asked["prompt"], negative_class=asked["negative_class"],
                           negative_prompt=asked["negative_prompt"] or None, guidance=guidance,
                           rescale=req.get("guidance_rescale") or 0.0,
                           interval=tuple(interval) if interval is not None else None)
    except UserError:
        raise
    except ValueError as e:  # the guidance wrapper's own checks (scale, rescale, interval)
        raise UserError(str(e), param="guidance") from None


def _negative(base, req: dict):
    """The condition CFG subtracts (one sample), as ``conditioned`` builds it."""
    from ...pipelines.conditioning import class_label, encode_prompts

    info = info_of(base)
    if info.cond.kind == "class" and req.get("negative_class") not in (None, ""):
        from ...core.cond import Cond

        return Cond(labels=torch.tensor([class_label(req["negative_class"], info, "negative_class")]))
    if info.cond.kind == "text" and req.get("negative_prompt"):
        return encode_prompts(base, [req["negative_prompt"]], "negative_prompt")
    return None


def _nfe_limit(sampler: str, steps: int, scale: int = 1) -> int | None:
    """Network evaluations of ``steps`` steps from the registry; a ``UserError`` above MAX_NFE."""
    from ...core.samplers import SAMPLERS

    info = SAMPLERS[sampler]
    nfe = info.count_nfe(steps) if info.fixed_nfe else None
    if nfe is not None and nfe * scale > MAX_NFE:
        raise UserError(f"{steps} steps of {sampler} ({info.nfe_per_step} network evaluations a step) make "
                        f"{nfe * scale} evaluations; at most {MAX_NFE} are allowed per generation", param="steps")
    return None if nfe is None else nfe * scale


def plan(catalog, req: dict, runs_label: str, kind: str = "generate") -> Plan:
    """Check a generate / img2img / inpaint request (``api`` has checked its types and ranges)
    and build everything its run needs; ``UserError(param=...)`` names what is wrong."""
    from ...core.guidance import autoguidance
    from ...core.sampling import sampling_defaults

    cid = req["checkpoint"]
    catalog.resolve(cid)                      # an unknown checkpoint is named before its adapters
    lora = _loras(catalog, cid, req.get("lora"))
    base = catalog.load(cid, lora=lora)
    info = info_of(base)
    if info.cond.kind == "image":
        raise UserError("this checkpoint is a super-resolution model: use `diffusionlab upscale`", param="checkpoint")
    guided, conditioning = _conditioned(base, req)
    sampler = req.get("sampler") or None
    choice = sampling_defaults(base, sampler, req.get("steps"), req.get("guidance"))
    if choice.steps > MAX_STEPS:
        raise UserError(f"{choice.steps} steps; at most {MAX_STEPS}", param="steps")
    w = req.get("autoguidance")
    if w is not None and w != 1.0:
        if not catalog.describe(cid)["has_guide"]:
            raise UserError("this checkpoint has no guide snapshot for autoguidance (train with --guide-at)",
                            param="autoguidance")
        guided = autoguidance(guided, catalog.load(cid, weights="guide"), w)
    batch, seed = int(req.get("batch") or 1), int(req.get("seed") or 0)
    p = Plan(kind, cid, base, guided, conditioning, choice.sampler, choice.steps, choice.guidance, seed, batch,
             tuple(info.image_shape), None, {}, "", negative=_negative(base, req), lora=lora)
    scale = 1
    if kind == "img2img":
        from ...pipelines.img2img import img2img_steps

        p.strength = float(req["strength"])
        p.image = load_image(req.get("image"), pixel_shape(p))
        scale_steps = img2img_steps(p.strength, choice.steps)
        p.nfe_planned = _nfe_limit(choice.sampler, max(scale_steps, 1)) if scale_steps else 0
    elif kind == "inpaint":
        from ...pipelines.inpaint import DEFAULT_JUMP, DEFAULT_RESAMPLE, repaint_segments

        p.image = load_image(req.get("image"), pixel_shape(p))
        p.mask = load_mask(req.get("mask"), pixel_shape(p))
        runs = sum((b - a) * r for a, b, r in repaint_segments(choice.steps, DEFAULT_JUMP, DEFAULT_RESAMPLE))
        from ...core.samplers import SAMPLERS

        scale = max(1, SAMPLERS[choice.sampler].nfe_per_step)
        p.nfe_planned = runs * scale
        if p.nfe_planned > MAX_NFE:
            raise UserError(f"inpainting with {choice.steps} steps runs {runs} sampler steps (RePaint's resampling) "
                            f"and {p.nfe_planned} network evaluations; at most {MAX_NFE} are allowed", param="steps")
    else:
        p.nfe_planned = _nfe_limit(choice.sampler, choice.steps)
    p.params = _params(req, p)
    p.command = command_line(p, runs_label)
    return p


def _loras(catalog, cid: str, entries) -> tuple:
    """The request's ``lora`` entries ({"id", "scale"}) as (adapter id, scale) pairs, each an
    adapter trained on checkpoint ``cid`` (``Catalog.check_adapter``: else a ``UserError`` naming
    "lora", before anything is queued)."""
    entries = list(entries or ())
    if len(entries) > MAX_LORA:
        raise UserError(f"{len(entries)} LoRA adapters; at most {MAX_LORA} apply to one generation", param="lora")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("id"), str):
            raise UserError('a LoRA adapter is {"id": ADAPTER, "scale": S}', param="lora")
        scale = float(e.get("scale", 1.0))
        if not (math.isfinite(scale) and -2.0 <= scale <= 2.0):
            raise UserError(f"a LoRA scale is a number in [-2, 2], got {scale}", param="lora")
        catalog.check_adapter(e["id"], cid)
        out.append((e["id"], scale))
    return tuple(out)


def _params(req: dict, p: Plan) -> dict:
    keep = {k: v for k, v in req.items() if v not in (None, "") and k not in ("image", "mask", "lora")}
    keep.update(sampler=p.sampler, steps=p.steps, guidance=p.guidance, seed=p.seed, batch=p.batch, mode=p.kind)
    if p.lora:
        keep["lora"] = [{"id": aid, "scale": scale} for aid, scale in p.lora]
    return keep


def _g(v: float) -> str:
    """A number for a flag: short where that is exact, else every digit."""
    v = float(v)
    return f"{v:g}" if float(f"{v:g}") == v else repr(v)


def command_line(p: Plan, runs_label: str) -> str:
    """The equivalent ``diffusionlab`` command (same model, seed, sampler, steps, guidance)."""
    import posixpath

    ckpt = posixpath.join(runs_label, p.checkpoint)
    r = p.params
    args = ["diffusionlab", "sample" if p.kind == "generate" else p.kind, "--ckpt", ckpt]
    for aid, scale in p.lora:                 # the adapter folders, named as --ckpt is
        args += ["--lora", f"{posixpath.join(runs_label, aid)}:{_g(scale)}"]
    if p.kind == "generate":
        args += ["--n", str(p.batch)]
    else:
        args += ["--input", "input.png"]
        args += ["--strength", f"{p.strength:g}"] if p.kind == "img2img" else ["--mask", _mask_flag(r.get("mask_spec"))]
    for key, flag in (("prompt", "--prompt"), ("negative_prompt", "--negative-prompt"), ("class", "--class"),
                      ("negative_class", "--negative-class")):
        if r.get(key) not in (None, ""):
            args += [flag, str(r[key])]
    args += ["--seed", str(p.seed), "--sampler", p.sampler, "--steps", str(p.steps)]
    if info_of(p.base).cond.conditional:
        args += ["--guidance", f"{p.guidance:g}"]
    if r.get("guidance_rescale"):
        args += ["--guidance-rescale", f"{r['guidance_rescale']:g}"]
    if r.get("guidance_interval"):
        args += ["--guidance-interval", ",".join(f"{v:g}" for v in r["guidance_interval"])]
    if r.get("autoguidance") not in (None, 1.0):
        args += ["--autoguidance", f"{r['autoguidance']:g}"]
    args += ["--out", "sample.png"]
    return " ".join(shlex.quote(a) for a in args)


def _mask_flag(spec) -> str:
    return spec if isinstance(spec, str) else "mask.png"


# ---------------------------------------------------------------- images sent by the page


def load_image(spec, shape: tuple) -> torch.Tensor:
    """A pipeline input [1, C, H, W] in [-1, 1]: ``{"digit": i}`` (a held-out MNIST digit) or
    ``{"png": base64 or data URL}`` (an upload: type- and size-checked, centre-cropped and
    resized to the model's size)."""
    from ...pipelines.inputs import square_resized

    c, h, w = shape
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("digit", "png"):
        raise UserError('an image is {"digit": i} (a dataset digit) or {"png": base64 data}', param="image")
    if "digit" in spec:
        x = dataset_digit(spec["digit"], h)
        if h != w:
            raise UserError(f"dataset digits are square; this model takes {w}x{h}", param="image")
        return x.expand(c, h, w).clone()[None] if c in (1, 3) else _bad_channels(c)
    img = decode_upload(spec["png"])
    return square_resized(img, h, c)[None] if h == w else _bad_channels(c)


def _bad_channels(c):
    raise UserError(f"this model takes {c}-channel or non-square images, which the page cannot give it", param="image")


def dataset_digit(i, size: int) -> torch.Tensor:
    """Held-out MNIST digit ``i`` at ``size`` (pads 28 to 32 as the training data does)."""
    from ...data import load_mnist

    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 64:
        raise UserError("a dataset digit is an index 0..63", param="image")
    if size not in (28, 32) and size < 8:
        raise UserError(f"no dataset digits at {size} px", param="image")
    return _digits(size)[i]


_DIGITS: dict = {}


def _digits(size: int) -> torch.Tensor:
    if size not in _DIGITS:
        from ...data import load_mnist

        _DIGITS[size] = load_mnist("heldout", size, resize="pad" if size in (28, 32) else "resize")[:64].float()
    return _DIGITS[size]


def decode_upload(data) -> object:
    """base64 (or a data URL) -> a checked PIL image (``pipelines.inputs.image_from_bytes``)."""
    from ...pipelines.inputs import image_from_bytes

    if not isinstance(data, str):
        raise UserError("an upload is base64 text or a data URL", param="image")
    if len(data) > MAX_UPLOAD_BYTES * 4 // 3 + 1024:
        raise UserError(f"an upload over {MAX_UPLOAD_BYTES:,} bytes", param="image")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise UserError("an upload that is not valid base64", param="image") from None
    return image_from_bytes(raw, MAX_UPLOAD_BYTES, MAX_UPLOAD_SIDE)


def load_mask(spec, shape: tuple) -> torch.Tensor:
    """An inpainting mask [1, 1, H, W] (True = fill): 'left' | 'right' | 'top' | 'bottom',
    ``{"rect": [x0, y0, x1, y1]}`` in model pixels, or ``{"png": ...}`` (white = fill)."""
    from ...pipelines.inpaint import HALVES, parse_mask

    _, h, w = shape
    if isinstance(spec, str) and spec in HALVES:
        return parse_mask(spec, shape)
    if isinstance(spec, dict) and list(spec) == ["rect"]:
        r = spec["rect"]
        if not (isinstance(r, list) and len(r) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)):
            raise UserError("a rectangle is [x0, y0, x1, y1] (four integers)", param="mask")
        return parse_mask(",".join(str(v) for v in r), shape)
    if isinstance(spec, dict) and list(spec) == ["png"]:
        img = decode_upload(spec["png"]).convert("L").resize((w, h))
        return torch.from_numpy(np.asarray(img) > 127)[None, None]
    raise UserError('a mask is "left", "right", "top", "bottom", {"rect": [x0, y0, x1, y1]} or {"png": ...}',
                    param="mask")


# ---------------------------------------------------------------- running


class _Guard(DenoiserWrapper):
    """Stops a run whose client went away, or an adaptive sampler past MAX_NFE, at its next
    network evaluation."""

    def __init__(self, inner, job):
        super().__init__(inner)
        self.job, self.calls = job, 0

    def denoise(self, x, sigma, cond, inner):
        self.job.check()
        self.calls += 1
        if self.calls > MAX_NFE:
            raise UserError(f"stopped after {MAX_NFE} network evaluations (the limit per generation)", param="steps")
        return inner(x, sigma, cond)


def run_plan(p: Plan, job) -> None:
    """Run ``p`` in worker ``job``: ``start``, one ``step`` per sampler step, then ``done``."""
    from ...core.rng import per_sample_generators, randn
    from ...core.sampling import resolve_sigmas

    t0 = time.monotonic()
    den = _Guard(p.guided, job)
    n = p.batch
    cond = p.conditioning(n)
    grid = resolve_sigmas(p.base, p.steps, sampler=p.sampler)
    job.emit("start", {"sigmas": [_num(s) for s in grid.tolist()], "sampler": p.sampler, "steps": p.steps,
                       "nfe_planned": p.nfe_planned, "batch": n, "shape": list(p.shape), "guidance": p.guidance,
                       "command": p.command, "mode": p.kind})
    keep = job.result
    keep.update(traj=[], sigmas=[], plan=p)
    s0 = float(grid[0])
    if p.kind == "generate":  # the start: the same draw sample() makes from these generators
        x_init = randn((n, *p.shape), per_sample_generators(p.seed, range(n)), "cpu")
        x_init = x_init * info_of(p.base).prior_std(s0) if math.isfinite(s0) else x_init
        keep["traj"].append(x_init.half())
        keep["sigmas"].append(s0)
    frames: list = []
    count = {"i": 0, "first": None}

    def callback(d):
        job.check()
        sig, nxt = float(d["sigma"]), float(d["sigma_next"])
        x = d["x"].float()
        keep["traj"].append(x.half())
        keep["sigmas"].append(nxt)
        frames.append(shown(p, vp(x, nxt)).clamp(-1, 1))
        if count["first"] is None:
            count["first"] = time.monotonic() - t0
        job.emit("step", {"i": count["i"], "sigma": _num(sig), "sigma_next": _num(nxt), "nfe": d.get("nfe"),
                          "x_t": data_url(png_bytes(shown(p, vp(x, nxt)))),
                          "x0": data_url(png_bytes(shown(p, d["denoised"].float())))})
        count["i"] += 1

    out = shown(p, _sample(p, den, cond, callback)) if p.kind == "generate" else _sample(p, den, cond, callback)
    png = png_bytes(out, {"parameters": json.dumps(p.params), "diffusionlab-command": p.command, "Software": "diffusionlab"})
    keep.update(png=png, images=[png_bytes(out[i:i + 1], {"parameters": json.dumps({**p.params, "index": i}),
                                                          "diffusionlab-command": p.command}) for i in range(n)],
                gif=_gif(frames, out))
    seconds = time.monotonic() - t0
    job.emit("done", {"image": data_url(png), "png": f"/api/jobs/{job.id}/result.png",
                      "gif": f"/api/jobs/{job.id}/denoising.gif", "command": p.command, "steps_run": count["i"],
                      "nfe": den.calls, "seconds": round(seconds, 3),
                      "first_step_seconds": None if count["first"] is None else round(count["first"], 3),
                      "images": [f"/api/jobs/{job.id}/image/{i}.png" for i in range(n)]})


def _sample(p: Plan, den, cond, callback) -> torch.Tensor:
    from ...core.sampling import sample

    if p.kind == "generate":
        from ...core.rng import per_sample_generators

        return sample(den, (p.batch, *p.shape), sampler=p.sampler, steps=p.steps, cond=cond,
                      generator=per_sample_generators(p.seed, range(p.batch)), callback=callback).float().cpu()
    from ...pipelines.latent import in_latent_space, inpaint_in_latent_space

    images = p.image.expand(p.batch, *p.image.shape[1:]).clone()
    codec = info_of(p.base).latent
    if p.kind == "img2img":
        from ...pipelines.img2img import img2img

        def edit(x):
            return img2img(den, x, p.strength, steps=p.steps, sampler=p.sampler, cond=cond, seed=p.seed,
                           callback=callback)
        return edit(images) if codec is None else in_latent_space(codec, images, edit)
    from ...pipelines.inpaint import inpaint

    def fill(x, mask):
        return inpaint(den, x, mask, steps=p.steps, sampler=p.sampler, cond=cond, seed=p.seed, callback=callback)
    return fill(images, p.mask) if codec is None else inpaint_in_latent_space(codec, images, p.mask, fill)


def _gif(frames: list, final: torch.Tensor) -> bytes:
    """The denoising GIF (``evaluation.viz.save_gif``), in memory."""
    import tempfile
    from pathlib import Path

    from ...evaluation.viz import save_gif

    frames = frames + [final.clamp(-1, 1)]
    with tempfile.TemporaryDirectory(prefix="dl-gif-") as d:
        path = Path(d) / "denoising.gif"
        save_gif(frames, path, nrow=max(1, int(math.ceil(math.sqrt(len(final))))))
        return path.read_bytes()


# ---------------------------------------------------------------- the views


def guidance_view(job, step: int) -> dict:
    """At kept point ``step`` of a finished job: the unconditional (or negative) and conditional
    predictions of the checkpoint's own network, their difference and the guided result, as
    noise (eps = (x - D) / sigma) and as x0, with the formula (docs/NOTATION.md). A generation
    keeps x before each step (point k: x at the grid's sigma_k); img2img and inpainting keep x
    after each step (point k: x at the sigma that step reached)."""
    from ...core.samplers import to_eps

    keep = job.result
    p = keep.get("plan")
    if p is None or not keep.get("traj"):
        raise UserError("this job kept no trajectory (it has not run, or it is too old: run it again)", param="job")
    info = info_of(p.base)
    if not info.cond.conditional:
        raise UserError("an unconditional model has no guidance to show: pick a class or text model", param="job")
    if not 0 <= step < len(keep["traj"]) - 1:
        raise UserError(f"step {step} is outside 0..{len(keep['traj']) - 2}", param="step")
    x = keep["traj"][step].float()
    sigma = keep["sigmas"][step]
    n = len(x)
    sig = torch.full((n,), sigma)
    pos = p.conditioning(n)
    neg = info.null_cond(n) if p.negative is None else _repeat(p.negative, n)
    with torch.no_grad():
        d_c = p.base(x, sig, pos).float()
        d_u = p.base(x, sig, neg).float()
        d_g = p.guided(x, sig, pos).float()
    s = p.guidance
    if info.latent is not None:  # a latent model: its noise lives in latent space; show the decoded estimates
        e_c, e_u, e_g = (shown(p, d) for d in (d_c, d_u, d_g))
        x_shown, d_c, d_u, d_g = shown(p, vp(x, sigma)), e_c, e_u, e_g
        show_eps = lambda e: data_url(png_bytes(e))  # noqa: E731
    else:
        e_c, e_u, e_g = (to_eps(x, d, float(sigma)) for d in (d_c, d_u, d_g))
        x_shown = vp(x, sigma)
        show_eps = lambda e: data_url(png_bytes((e / EPS_RANGE).clamp(-1, 1)))  # noqa: E731
    diff = e_c - e_u
    dmax = float(diff.abs().max()) or 1.0
    negname = "the negative condition" if p.negative is not None else "the null condition (empty prompt / no class)"
    return {"step": step, "sigma": _num(sigma), "scale": s,
            "uncond": show_eps(e_u), "cond": show_eps(e_c), "difference": data_url(png_bytes(diff / dmax)),
            "guided": show_eps(e_g), "x_t": data_url(png_bytes(x_shown.clamp(-1, 1))),
            "decoded": info.latent is not None,
            "x0_uncond": data_url(png_bytes(d_u)), "x0_cond": data_url(png_bytes(d_c)), "x0_guided": data_url(png_bytes(d_g)),
            "difference_max": dmax, "eps_range": EPS_RANGE, "negative": negname,
            "formula": "D_s(x; sigma, c) = D(x; sigma, c_neg) + s * (D(x; sigma, c) - D(x; sigma, c_neg));  "
                       "eps_hat = (x - D) / sigma = eps_neg + s * (eps_c - eps_neg)",
            "applied": {"rescale": p.params.get("guidance_rescale") or 0.0, "interval": p.params.get("guidance_interval")}}


def _repeat(c, n):
    from ...core.cond import CondSpec

    return CondSpec.repeat(c, n)


def forward_view(req: dict) -> dict:
    """q(x_t | x0) of one image on a ``timesteps``-step beta schedule at step ``t`` (0: clean),
    with abar, SNR and sigma over all t for the plot (``core.process.q_sample``)."""
    from ...core.process import q_sample
    from ...core.rng import per_sample_generators, randn
    from ...core.schedules import BETA_SCHEDULES, DiscreteSchedule

    T, t = int(req["timesteps"]), int(req["t"])
    if not 0 <= t <= T:
        raise UserError(f"t={t} is outside 0..{T} (0 is the clean image)", param="t")
    size = int(req.get("size") or 32)
    x0 = load_image(req["image"], (1 if "digit" in req["image"] else 3, size, size))
    sched = DiscreteSchedule.from_name(req["schedule"], T)
    abar = sched.abar.double()
    noise = randn(tuple(x0.shape), per_sample_generators(int(req.get("seed") or 0), [0]), "cpu")
    if t == 0:
        xt, a = x0, 1.0
    else:
        xt = q_sample(sched, x0, torch.tensor([t - 1]), noise)
        a = float(abar[t - 1])
    stride = max(1, T // 250)
    ts = list(range(1, T + 1, stride))
    ab = [float(abar[i - 1]) for i in ts]
    return {"t": t, "timesteps": T, "schedule": req["schedule"], "abar": a, "snr": _num(a / (1 - a)) if a < 1 else "inf",
            "sigma": _num(math.sqrt((1 - a) / a)) if a > 0 else "inf",
            "x0": data_url(png_bytes(x0)), "x_t": data_url(png_bytes(xt.float())),
            "noise": data_url(png_bytes((noise / EPS_RANGE).clamp(-1, 1))),
            "curve": {"t": ts, "abar": ab, "log10_snr": [math.log10(v / (1 - v)) if 0 < v < 1 else None for v in ab],
                      "sigma": [math.sqrt((1 - v) / v) if v > 0 else None for v in ab]},
            "formula": "x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;  SNR = abar / (1 - abar) = 1 / sigma^2"}


def tokens_view(catalog, cid: str, prompt: str) -> dict:
    """The prompt as the checkpoint's text encoder sees it (``prompt_tokens``)."""
    den = catalog.load(cid)
    spec = info_of(den).cond
    if spec.kind != "text":
        raise UserError("this checkpoint takes no prompt (it is not a text model)", param="checkpoint")
    if len(prompt) > MAX_PROMPT:
        raise UserError(f"a prompt of {len(prompt)} characters; at most {MAX_PROMPT} are accepted", param="prompt")
    return prompt_tokens(spec.encoder, prompt)


def prompt_tokens(encoder: str, prompt: str) -> dict:
    """``prompt`` as text encoder ``encoder`` sees it: MiniLM's word pieces ([CLS] ... [SEP]) or
    the small encoder's bytes, split at its token limit into kept and dropped."""
    from ...text.encoders import get_encoder

    enc = get_encoder(encoder)
    if encoder == "minilm":
        tok = enc.model.tokenizer
        pieces = tok.convert_ids_to_tokens(tok(prompt)["input_ids"])      # [CLS] ... [SEP]
    else:
        pieces = ["<s>"] + [bytes([b]).decode("latin-1") for b in prompt.strip().lower().encode("utf-8")] + ["</s>"]
    n = enc.max_tokens
    truncated = len(pieces) > n
    kept = pieces[: n - 1] + pieces[-1:] if truncated else pieces           # the end marker survives truncation
    return {"encoder": encoder, "max_tokens": n, "tokens": kept, "dropped": pieces[n - 1:-1] if truncated else [],
            "count": len(pieces), "truncated": truncated, "null": prompt.strip() == "",
            "note": "the empty prompt is the null condition (the learned null context)" if not prompt.strip() else ""}


def architecture_view(catalog, cid: str) -> dict:
    """The loaded checkpoint's own structure: the stages from prompt to image (text encoder,
    conditioning, the network, the sampler loop) and the network's blocks in the order one
    forward pass runs them, each with its output shape, parameter count and whether it holds
    self- or cross-attention (read off the modules with forward hooks, not a fixed picture)."""
    from ...core.sampling import sampling_defaults

    import copy

    den = copy.deepcopy(catalog.load(cid))   # hooks go on a copy: a running generation is not touched
    info = info_of(den)
    net = den.net
    blocks = _blocks(net, den, info)
    choice = sampling_defaults(den)
    spec = info.cond
    stages = []
    if spec.kind == "text":
        enc = spec.encoder
        stages += [{"name": "tokenizer", "detail": "WordPiece (BERT uncased), 64 tokens" if enc == "minilm" else "UTF-8 bytes"},
                   {"name": "text encoder", "detail": "all-MiniLM-L6-v2, frozen, 384-wide token embeddings + pooled"
                    if enc == "minilm" else "the network's own small byte-token encoder"}]
    cond_detail = {"none": "none (unconditional)", "class": f"class embedding, {spec.num_classes} classes + a learned null row",
                   "text": "cross-attention on the token embeddings; pooled embedding added to the time embedding",
                   "image": "low-resolution image concatenated to the input", "vector": "a vector (FiLM)"}[spec.kind]
    stages.append({"name": "conditioning", "detail": cond_detail})
    stages.append({"name": f"network ({type(net).__name__})",
                   "detail": f"{sum(p.numel() for p in net.parameters()):,} parameters, {len(blocks)} blocks"})
    stages.append({"name": "sampler loop", "detail": f"{choice.sampler}, {choice.steps} steps (checkpoint default), "
                   f"process {info.process}"})
    if info.latent is not None:
        codec = info.latent
        stages.append({"name": "decoder (autoencoder)", "detail": "latents " + "x".join(map(str, codec.latent_shape))
                       + " -> pixels " + "x".join(map(str, codec.pixel_shape)) + ", per-channel scale from data"})
        stages.append({"name": "image", "detail": "x0 in [-1, 1], " + "x".join(map(str, codec.pixel_shape))})
    else:
        stages.append({"name": "image", "detail": "x0 in [-1, 1], " + "x".join(str(v) for v in info.image_shape)})
    return {"checkpoint": cid, "stages": stages, "blocks": blocks,
            "total_params": sum(p.numel() for p in net.parameters())}


def _blocks(net, den, info) -> list[dict]:
    """One forward pass at sigma = 1 on the null condition, recorded by hooks and grouped into
    the network's top-level blocks (a ModuleList's items count one each; leaf identities dropped)."""
    from torch import nn

    calls: list[tuple[str, tuple, tuple, str]] = []
    hooks = []
    for name, mod in net.named_modules():
        if name and not isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: calls.append((name, _shape(inp), _shape(out), type(m).__name__))))
    try:
        with torch.no_grad():
            den(torch.zeros(1, *info.image_shape), torch.ones(1), info.null_cond(1) if info.cond.conditional else None)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(net.named_modules())
    groups: dict[str, dict] = {}
    for name, ins, outs, cls in calls:
        parts = name.split(".")
        key = ".".join(parts[:2]) if isinstance(modules.get(parts[0]), nn.ModuleList) and len(parts) > 1 else parts[0]
        g = groups.setdefault(key, {"name": key, "types": [], "in_shape": ins,
                                    "params": sum(p.numel() for p in modules[key].parameters())})
        g["types"].append(cls)
        if not g.get("exact"):          # children fire before their parent: the last call is the block's output
            g["out_shape"] = outs
        if name == key:                 # the block itself was called: its own input and output
            g.update(in_shape=ins, out_shape=outs, exact=True)
    out = []
    for g in groups.values():
        types = [t for t in g["types"] if t != "Identity"]
        if not types and not g["params"]:
            continue
        subnames = [n.rsplit(".", 1)[-1] for n, _ in modules[g["name"]].named_modules()]
        self_attn = any(t in ("Attention", "LinearAttention") for t in types) or "qkv" in subnames  # DiT: inline qkv
        out.append({"name": g["name"], "type": _summary(types), "in_shape": g["in_shape"], "out_shape": g["out_shape"],
                    "params": g["params"], "attention": self_attn,
                    "cross_attention": any(t == "CrossAttention" for t in types)})
    return out


def _summary(types: list[str]) -> str:
    seen = []
    for t in types:
        if t not in seen and t not in ("Conv2d", "Linear", "GroupNorm", "SiLU", "Dropout", "LayerNorm", "GELU"):
            seen.append(t)
    return " + ".join(seen) or (types[0] if types else "")


def _shape(v):
    if isinstance(v, torch.Tensor):
        return list(v.shape)
    if isinstance(v, (tuple, list)) and v and isinstance(v[0], torch.Tensor):
        return list(v[0].shape)
    return None
