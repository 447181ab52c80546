"""A trained model out of diffusionlab: a diffusers folder or an ONNX file (``diffusionlab
export``).

**diffusers** (``export_diffusers``, the ``[interop]`` extra): a run whose U-Net was trained with
``--layout diffusers`` *is* a diffusers ``UNet2DModel`` (``nn.diffusers_net``), and a ``ddpm``
process is a DDIM scheduler config (``diffusers_io.process_scheduler``, the betas written out
exactly). The folder holds ``unet/`` (safetensors), ``scheduler/``, ``model_index.json``
(``DDPMPipeline``) and ``diffusionlab.json`` (class names, the null label, the recorded sampling
defaults), so ``DDPMPipeline.from_pretrained(folder)`` and ``diffusionlab sample --ckpt folder``
both run it. What does not map (README "diffusers out"): the native U-Net (pixel-unshuffle
patches, bias-free qkv, linear attention), the DiT, text / image / vector conditioning and every
process but ``ddpm``.

**ONNX** (``export_onnx``, the ``[onnx]`` extra): the *network* - inputs ``x_in`` [B, C, H, W]
(= c_in x), ``c_noise`` [B] and the condition's tensors (``labels`` int64 and ``null`` bool for a
class model; ``text`` [B, L, D], ``mask`` and ``pooled`` for a MiniLM text model; ``image`` for an
image-conditioned one), output ``out`` [B, C or 2C, H, W] - exported with ``torch.onnx.export``
(a dynamic batch axis; dynamic token length for text). The preconditioning lives in a JSON sidecar
(``<file>.json``): the process, its preconditioner's parameters and the default grid with its four
coefficients at every sigma, so x0 = c_skip x + c_out out[:, :C] needs no diffusionlab code (the
README's onnxruntime script samples from it).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.cond import Cond
from ..core.files import atomic_path
from ..errors import UserError
from .diffusers_io import SIDECAR, process_scheduler
from .loading import read_checkpoint

FORMATS = ("diffusers", "onnx")
ONNX_FORMAT = "diffusionlab-onnx/1"
ONNX_HINT = "pip install 'diffusionlab[onnx]'"


def _fresh_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty", param="out", hint="pass --overwrite or another --out")


def export_diffusers(ckpt, out, use_ema: bool = True, overwrite: bool = False) -> Path:
    """The checkpoint ``ckpt`` as a diffusers folder ``out`` (module docstring). Written into a
    temporary sibling and renamed, so an interrupted export leaves no half folder."""
    from ..nn.diffusers_net import DiffusersNetwork

    rec = read_checkpoint(ckpt, use_ema)
    net = rec.network
    if rec.arch == "diffusers":
        raise UserError(f"{ckpt} is already a diffusers folder", param="ckpt")
    if not isinstance(net, DiffusersNetwork) or net.kind != "UNet2DModel":
        raise UserError(f"a {rec.arch} network in the native layout has no diffusers counterpart (pixel-unshuffle "
                        "patches, bias-free qkv and linear attention do not map)", param="format",
                        hint="train with --arch unet --layout diffusers; the README's diffusers table lists what maps")
    if rec.latent is not None:
        raise UserError("a latent model's autoencoder has no diffusers export yet", param="format")
    scheduler = process_scheduler(rec.process, rec.sampler)
    out = Path(out)
    _fresh_folder(out, overwrite)
    import diffusers

    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = net.model
        model.register_to_config(sample_size=int(rec.image_shape[1]))
        model.save_pretrained(tmp / "unet", safe_serialization=True)
        sched = diffusers.DDIMScheduler.from_config({k: v for k, v in scheduler.items() if k != "_class_name"})
        sched.save_pretrained(tmp / "scheduler")
        index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        cond = rec.cond
        side = {"exported_from": rec.provenance.path, "step": rec.provenance.step, "weights": rec.provenance.weights,
                "data": rec.train.get("data"),
                "image_size": list(rec.image_shape[1:]),
                "sampling": {"sampler": rec.sampler, "steps": rec.steps, "guidance": rec.guidance},
                "num_classes": cond.num_classes, "class_names": list(cond.class_names) if cond.class_names else None,
                "null_class": net.null_class, "learned_variance": net.learned_variance}
        (tmp / SIDECAR).write_text(json.dumps(side, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------ ONNX
class _OnnxNetwork(torch.nn.Module):
    """The network with its condition as plain tensors: ``forward(x_in, c_noise, *fields)``."""

    def __init__(self, net, fields: tuple):
        super().__init__()
        self.net, self.fields = net, fields

    def forward(self, x_in, c_noise, *tensors):
        from ..core.protocol import call_net

        cond = Cond(**dict(zip(self.fields, tensors))) if self.fields else None
        return call_net(self.net, x_in, c_noise, cond)


def onnx_inputs(cond_spec, image_shape, batch: int = 2, generator=None) -> dict:
    """Example inputs of the exported network, by name (float32 / int64 / bool, as the file takes
    them): random images and noise labels, and the condition's fields with half the batch null."""
    C, H, W = image_shape
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = {"x_in": torch.randn(batch, C, H, W, generator=g), "c_noise": torch.rand(batch, generator=g) * 999}
    if not cond_spec.conditional:
        return x
    fields = cond_spec.fields
    if "labels" in fields:
        x["labels"] = torch.randint(0, cond_spec.num_classes, (batch,), generator=g)
    if "text" in fields:
        x["text"] = torch.randn(batch, 5, cond_spec.text_dim, generator=g)
        x["mask"] = torch.ones(batch, 5, dtype=torch.bool)
        x["mask"][0, 3:] = False
    if "tokens" in fields:
        x["tokens"] = torch.randint(1, 200, (batch, 5), generator=g)
        x["mask"] = torch.ones(batch, 5, dtype=torch.bool)
    if "pooled" in fields:
        x["pooled"] = torch.randn(batch, cond_spec.pooled_dim, generator=g)
    if "image" in fields:
        x["image"] = torch.randn(batch, cond_spec.image_channels, H, W, generator=g)
    x["null"] = torch.arange(batch) % 2 == 1
    return x


def _names(cond_spec) -> tuple:
    if not cond_spec.conditional:
        return ()
    names = list(cond_spec.fields)
    if ("text" in names or "tokens" in names) and "mask" not in names:
        names.insert(names.index("text" if "text" in names else "tokens") + 1, "mask")
    return (*names, "null")


def coefficients(den, sigmas: torch.Tensor) -> dict:
    """The four coefficients of ``den`` at each sigma, with a consistency model's boundary folded
    in: x0 = c_skip x + c_out out[:, :C], out = net(c_in x, c_noise). Lists (inf as ``Infinity``)."""
    from ..core.denoiser import boundary_coefficients

    s = torch.as_tensor(sigmas, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = (torch.as_tensor(c, dtype=torch.float64).expand(len(s)) for c in den.precond(s))
    if den.boundary is not None:
        a, b = boundary_coefficients(s, den.boundary)
        c_skip, c_out = a + b * c_skip, b * c_out
    return {"sigmas": s.tolist(), "c_skip": c_skip.tolist(), "c_out": c_out.tolist(), "c_in": c_in.tolist(),
            "c_noise": c_noise.tolist()}


def onnx_sidecar(den, rec, names: tuple, learned_variance: bool) -> dict:
    """The JSON beside the ONNX file (module docstring)."""
    from ..core.sampling import resolve_sigmas, sampling_defaults

    info = den.info
    choice = sampling_defaults(den)
    grid = resolve_sigmas(den, choice.steps, sampler="ddim")
    spec = info.cond
    prior_vp = info.prior == "vp"
    return {"format": ONNX_FORMAT, "exported_from": rec.provenance.path, "step": rec.provenance.step,
            "weights": rec.provenance.weights, "image_shape": list(rec.image_shape), "inputs": list(("x_in", "c_noise",
                                                                                                    *names)),
            "output": "out", "learned_variance": learned_variance,
            "x0": "c_skip * x + c_out * out[:, :C], with x_in = c_in * x and c_noise given per sample",
            "process": asdict(rec.process), "prior": "vp" if prior_vp else "ve",
            "prior_note": "x at the grid's first sigma s0 is noise * sqrt(1 + s0^2) (vp), noise * s0 (ve), or the "
                          "noise itself when s0 is Infinity",
            "cond": {"kind": spec.kind, "num_classes": spec.num_classes,
                     "class_names": list(spec.class_names) if spec.class_names else None, "text_dim": spec.text_dim,
                     "encoder": spec.encoder, "encoder_fingerprint": spec.encoder_fingerprint,
                     "null": "set null[i] = true for the unconditional half of classifier-free guidance"},
            "sampling": {"sampler": choice.sampler, "steps": choice.steps, "guidance": choice.guidance},
            "grid": {"note": f"the default grid of {choice.steps} steps (for DDIM / Euler); the last sigma is 0",
                     **coefficients(den, grid)},
            "preconditioning": _precond_record(den)}


def _precond_record(den) -> dict:
    """The preconditioner's parameters, for other grids than the recorded one."""
    p = den.precond
    rec = {"class": type(p).__name__}
    rec.update({name: getattr(p, name) for name in ("objective", "sigma_data") if hasattr(p, name)})
    if hasattr(p, "log_sigmas"):  # a discrete model: its table, for c_noise at any sigma
        rec.update(log_sigmas=p.log_sigmas.tolist(),
                   c_noise="the fractional 0-based timestep: linear interpolation of the index in log sigma")
    if den.boundary is not None:
        rec["consistency_boundary"] = den.boundary
    return rec


def export_onnx(ckpt, out, use_ema: bool = True, overwrite: bool = False, opset: int | None = None,
                check: bool = True) -> dict:
    """The checkpoint's network as an ONNX file ``out`` and its sidecar ``out.json`` (module
    docstring). ``check``: run onnxruntime on random inputs against PyTorch and return the
    largest difference (``max_abs_diff``; the tolerance ``ONNX_TOL``). Returns the sidecar dict."""
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 5):
        raise UserError(f"ONNX export needs torch >= 2.5 (torch.onnx.export(dynamo=True)); this is {torch.__version__}",
                        hint=ONNX_HINT)
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs onnx and onnxscript ({e})", hint=ONNX_HINT) from e
    out = Path(out)
    side_path = out.with_name(out.name + ".json")
    for p in (out, side_path):
        if p.exists() and not overwrite:
            raise UserError(f"{p} exists", param="out", hint="pass --overwrite or another --out")
    rec = read_checkpoint(ckpt, use_ema)
    # the process's denoiser around the network (what load_denoiser builds, without an autoencoder or a
    # diffusers folder's clipping: the file holds the network, the sidecar its preconditioning)
    den = rec.spec.make_denoiser(rec.network, rec.process, None, rec.declared()).eval()
    spec = den.info.cond
    names = write_onnx(den.net, spec, rec.image_shape, out, opset)
    side = onnx_sidecar(den, rec, names, bool(getattr(den.net, "learned_variance", False)))
    if check:
        side["check"] = check_onnx(out, den.net, spec, rec.image_shape)
    with atomic_path(side_path) as tmp:
        Path(tmp).write_text(json.dumps(side, indent=1))
    return side


def write_onnx(network, spec, image_shape, out, opset: int | None = None) -> tuple:
    """``network`` (its condition ``spec``, images ``image_shape``) as the ONNX file ``out``
    (written atomically): inputs x_in, c_noise and the condition's tensors with a dynamic batch
    axis (and token length). Returns the condition's input names."""
    names = _names(spec)
    net = _OnnxNetwork(network, names).eval()
    example = onnx_inputs(spec, image_shape)
    args = tuple(example[n] for n in ("x_in", "c_noise", *names))
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", min=1, max=4096)
    dyn = [{0: batch, 1: tokens} if n in ("text", "tokens", "mask") else {0: batch} for n in ("x_in", "c_noise", *names)]
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")  # the exporter logs every torchvision op it skips
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with atomic_path(out, ".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, args, input_names=["x_in", "c_noise", *names], output_names=["out"],
                                        dynamic_shapes=(dyn[0], dyn[1], tuple(dyn[2:])) if names else tuple(dyn),
                                        dynamo=True, external_data=False, verbose=False,
                                        **({"opset_version": opset} if opset else {}))
            program.save(tmp)
    finally:
        quiet.setLevel(level)
    return names


ONNX_TOL = 1e-4  # onnxruntime vs PyTorch, largest |difference| relative to max(1, largest |output|)


def check_onnx(path, network, spec, image_shape, batch: int = 3, seed: int = 1) -> dict:
    """onnxruntime against PyTorch on random inputs (another batch size than the export's):
    the largest absolute difference, the output's scale and whether it is within ``ONNX_TOL``."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UserError(f"checking the ONNX file needs onnxruntime ({e})", hint=ONNX_HINT) from e
    names = _names(spec)
    net = _OnnxNetwork(network, names).eval()
    inputs = onnx_inputs(spec, image_shape, batch, torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {n: inputs[n].numpy() for n in ("x_in", "c_noise", *names)}
    got = torch.from_numpy(session.run(["out"], feed)[0])
    with torch.no_grad():
        ref = net(*(inputs[n] for n in ("x_in", "c_noise", *names)))
    diff, scale = float((got - ref).abs().max()), float(ref.abs().max())
    return {"max_abs_diff": diff, "max_abs_output": scale, "tolerance": ONNX_TOL,
            "ok": math.isfinite(diff) and diff <= ONNX_TOL * max(1.0, scale)}
