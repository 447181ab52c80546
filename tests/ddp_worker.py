"""One rank of a multi-process test run (tests/test_distributed.py): started by torchrun, or by
the tests with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
or alone as a world of one. Trains a tiny model of ``--kind`` for ``--steps`` steps through the
one Trainer and writes this rank's parameters and EMA to ``OUT/rank<r>.safetensors``.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py --out DIR --kind class
"""
from __future__ import annotations

import argparse
import sys

import torch
from safetensors.torch import save_file

from diffusionlab.core import distributed
from diffusionlab.errors import UserError
from diffusionlab.training import Trainer
from diffusionlab.training.config import tiny_config

KINDS = {
    "plain": {},
    "class": {"cond": "class", "p_uncond": 0.25},
    "text": {"cond": "text", "text_encoder": "small", "p_uncond": 0.25},
    "importance": {"diffusion": None},  # improved DDPM's importance-sampled t (stateful: gathered over ranks)
}


def config(kind: str, out: str, steps: int, accum: int, batch: int, **kw):
    from diffusionlab.models.processes import DiffusionConfig

    extra = dict(KINDS[kind])
    if kind == "importance":
        extra["diffusion"] = DiffusionConfig(timesteps=20, loss_kind="vlb", t_sampling="importance")
    base = dict(data="digits", image_size=8, batch_size=batch, grad_accum=accum, max_steps=steps, lr=1e-2,
                warmup_steps=0, hflip=True, val_every=0, checkpoint_every=0, num_threads=1, out_dir=out)
    return tiny_config(**{**base, **extra, **kw})


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=tuple(KINDS), default="plain")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--val-every", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--stop-after", type=int, default=None, help="stop (as Ctrl-C does) after this step")
    a = p.parse_args(argv)
    try:
        t = Trainer(config=config(a.kind, a.out, a.steps, a.accum, a.batch, checkpoint_every=a.checkpoint_every,
                                  val_every=a.val_every, eval_every=a.eval_every, eval_n=20, eval_steps=2,
                                  seed=a.seed, image_size=a.image_size),
                    resume=a.resume, overwrite=not a.resume)
        t.train(stop_after=a.stop_after)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = {f"model.{k}": v.detach().contiguous() for k, v in t.model.state_dict().items()}
    state.update({f"ema.{k}": v.detach().contiguous() for k, v in t.ema.model.state_dict().items()})
    save_file(state, f"{a.out}/rank{t.world.rank}.safetensors")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    code = main()
    distributed.destroy()
    distributed.exit_process(code)
