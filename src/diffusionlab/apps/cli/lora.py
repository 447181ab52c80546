"""``diffusionlab lora merge``: fold LoRA adapters into their base and write an ordinary
checkpoint (``models.merge.merge_checkpoint``)."""
from __future__ import annotations

import json

from ...errors import UserError
from . import options


def register(sub) -> None:
    p = sub.add_parser("lora", help="LoRA adapters: merge them into their base",
                       description="Work with LoRA adapters written by `diffusionlab finetune`.")
    ops = p.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    m = ops.add_parser("merge", help="fold adapters into the base and write an ordinary checkpoint",
                       description="Write the base with the adapters folded into its weights as an ordinary "
                                   "checkpoint: its samples equal `sample --ckpt BASE --lora ...` up to float "
                                   "rounding; the base is not changed.")
    m.add_argument("--ckpt", required=True, help="the base: run or checkpoint directory")
    options.add_lora(m)
    m.add_argument("--out", required=True, help="run folder of the merged checkpoint")
    m.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    m.set_defaults(run=run, param_flags=options.param_flags(m))


def run(a) -> int:
    from ...models.merge import merge_checkpoint

    if not a.lora:
        raise UserError("give the adapter(s) to merge: --lora PATH[:WEIGHT]", param="lora")
    path = merge_checkpoint(a.ckpt, list(a.lora), a.out, a.lora_scale, a.force, a.overwrite)
    print(json.dumps({"checkpoint": str(path), "base": a.ckpt, "lora": a.lora, "lora_scale": a.lora_scale}, indent=2))
    return 0
