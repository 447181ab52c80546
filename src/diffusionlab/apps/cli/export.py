"""``diffusionlab export``: a trained model as a diffusers folder or an ONNX file
(``models.export``; README "diffusers out" and "ONNX out")."""
from __future__ import annotations

import json

from . import options


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as a diffusers folder or an ONNX file",
                       description="Export a trained model. diffusers: a U-Net trained with --layout diffusers and a "
                                   "ddpm process become unet/ + scheduler/ (+ model_index.json for DDPMPipeline). "
                                   "onnx: the network (inputs x_in, c_noise and the condition's tensors) with its "
                                   "preconditioning and default grid in OUT.json; onnxruntime is checked against "
                                   "PyTorch on random inputs.")
    p.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    p.add_argument("--format", required=True, choices=("diffusers", "onnx"))
    p.add_argument("--out", required=True, help="diffusers: a folder; onnx: the .onnx file (its sidecar: OUT.json)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace what is at --out")
    p.add_argument("--opset", type=options.positive_int, default=None, help="onnx: the opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true", help="onnx: skip the onnxruntime-vs-PyTorch check")
    p.set_defaults(run=run, param_flags=options.param_flags(p))


def run(a) -> int:
    from ...models.export import export_diffusers, export_onnx

    if a.format == "diffusers":
        path = export_diffusers(a.ckpt, a.out, use_ema=not a.no_ema, overwrite=a.overwrite)
        print(json.dumps({"format": "diffusers", "folder": str(path), "ckpt": a.ckpt}, indent=2))
        return 0
    side = export_onnx(a.ckpt, a.out, use_ema=not a.no_ema, overwrite=a.overwrite, opset=a.opset,
                       check=not a.no_check)
    summary = {"format": "onnx", "file": a.out, "sidecar": a.out + ".json", "inputs": side["inputs"],
               "steps": side["sampling"]["steps"]}
    if "check" in side:
        summary["check"] = side["check"]
        if not side["check"]["ok"]:
            print(json.dumps(summary, indent=2))
            raise RuntimeError(f"onnxruntime differs from PyTorch by {side['check']['max_abs_diff']:.3g}")
    print(json.dumps(summary, indent=2))
    return 0
