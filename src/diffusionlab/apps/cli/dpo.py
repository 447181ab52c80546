"""``diffusionlab dpo`` (preference alignment with Diffusion-DPO on a trained model, ``training.dpo``)
and ``diffusionlab make-pairs`` (preference pairs from a model and a reward, ``pipelines.pairs``).
``dpo`` takes ``finetune``'s options (the LoRA settings, --full and train's training flags with
their meaning in ``train``) with the pairs folder in place of --data."""
from __future__ import annotations

from ...errors import EXIT_USER, UserError
from ...training.config import DPO_BETA
from . import finetune, options
from .finetune import TRAINING_FLAGS

DPO_FLAGS = tuple(f for f in TRAINING_FLAGS if f.field not in ("data", "digits"))


def register(sub) -> None:
    _register_dpo(sub)
    _register_make_pairs(sub)


def _register_dpo(sub) -> None:
    from ...training.dpo import DPO_LR

    p = sub.add_parser("dpo", help="align a trained model with preference pairs (Diffusion-DPO)",
                       description="Diffusion-DPO (Wallace et al. 2023): fine-tune a trained model so that it prefers "
                                   "the chosen image of each pair over the rejected one, relative to the frozen base. "
                                   "By default LoRA adapters train (sample with `sample --ckpt BASE --lora OUT`); "
                                   "--full trains every weight and writes an ordinary checkpoint. PAIRS is a folder "
                                   "with pairs.jsonl (`make-pairs` writes one; README 'Preference alignment'). "
                                   f"Defaults: beta {DPO_BETA:g}, lr {DPO_LR:g}, 16 pairs a step, rank 4.")
    p.add_argument("--pairs", required=True, help="the pairs folder (pairs.jsonl and the images)")
    p.add_argument("--beta", type=float, default=DPO_BETA,
                   help=f"the KL strength: how strongly the model is held to the base ({DPO_BETA:g}; in units of "
                        "the per-element mean squared error of the process's loss)")
    finetune.add_options(p, DPO_FLAGS, full_help="train every weight instead of adapters (the run is then an "
                                                 "ordinary checkpoint for --ckpt)")
    p.set_defaults(run=run, param_flags=finetune.param_flags(p))


def _register_make_pairs(sub) -> None:
    from ...pipelines.pairs import CANDIDATES_PER_PAIR, MARGIN

    q = sub.add_parser("make-pairs", help="sample candidates and rank them with a reward into preference pairs",
                       description="Sample candidates of --ckpt two at a time under each request (--prompt or "
                                   "--class, cycled), score them with --reward and keep the pairs whose scores differ "
                                   f"by at least --margin ({MARGIN:g}), the better one chosen, until --n pairs or "
                                   f"--max-samples candidates (default {CANDIDATES_PER_PAIR} per pair asked). "
                                   "Exit code 2 with the count reached when the cap comes first (the pairs found are "
                                   "kept in --out).")
    options.add_checkpoint(q)
    q.add_argument("--reward", required=True, metavar="NAME|module:function",
                   help="digit-confidence (the digit classifier's probability of the requested digit) or a "
                        "function f(images [B,C,H,W] in [0,1], conditions: list of dicts) -> B scores, as "
                        "module:function or path/to/file.py:function")
    q.add_argument("--n", type=int, required=True, help="pairs to make")
    q.add_argument("--prompt", action="append", default=None, help="a prompt (text models); repeat to cycle over "
                                                                   "several")
    q.add_argument("--class", dest="class_", type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                   default=None, metavar="K[,K...]",
                   help="the requested class(es): a class model's condition; for other models only the reward's "
                        "target (they sample unconditionally)")
    q.add_argument("--margin", type=float, default=MARGIN, help=f"the smallest score difference of a pair ({MARGIN:g})")
    q.add_argument("--max-samples", type=int, default=None,
                   help=f"the cap on candidates (default {CANDIDATES_PER_PAIR} x --n)")
    options.add_sampling(q, batch_size=32, seed_help="candidate i uses seed stream i of this seed")
    options.add_sampler_knobs(q)
    q.add_argument("--guidance", type=options.weight, default=None,
                   help="classifier-free guidance scale (default: the checkpoint's)")
    q.add_argument("--out", required=True, help="the pairs folder to write")
    q.add_argument("--overwrite", action="store_true", help="replace pairs already in --out")
    options.add_precision(q)
    q.set_defaults(run=run_make_pairs, param_flags=options.param_flags(q, {"n": "--n", "class_": "--class"}))


def run(a) -> int:
    from ...training.dpo import dpo_config

    return finetune.start(a, lambda fields: dpo_config(a.ckpt, a.pairs, beta=a.beta, full=a.full, rank=a.lora_rank,
                                                       alpha=a.lora_alpha, targets=a.lora_targets, **fields))


def run_make_pairs(a) -> int:
    import torch

    from ...core.devices import pick_precision
    from ...evaluation.rewards import load_reward
    from ...models.loading import load_denoiser
    from ...pipelines.pairs import make_pairs
    from .common import sampler_knobs

    if a.prompt and a.class_:
        raise UserError("give --prompt or --class, not both", param="prompt")
    requests = [{"prompt": p} for p in a.prompt or ()] or [{"class": c} for c in a.class_ or ()]
    reward = load_reward(a.reward)  # make_pairs checks the requests and the shape against it before sampling
    den = load_denoiser(a.ckpt, use_ema=not a.no_ema, autocast_dtype=pick_precision(a.precision, torch.device("cpu")),
                        autoencoder=a.autoencoder, **options.checkpoint_args(a))
    sampler = None if a.sampler == "auto" else a.sampler
    from ...core.sampling import sampling_defaults

    knobs = sampler_knobs(a, sampling_defaults(den, sampler, a.steps, a.guidance).sampler)
    res = make_pairs(den, requests, reward, a.n, a.out, margin=a.margin, max_samples=a.max_samples,
                     batch_size=a.batch_size, seed=a.seed, guidance=a.guidance, sampler=sampler, steps=a.steps,
                     knobs=knobs, overwrite=a.overwrite)
    print(f"wrote {res.pairs} pairs from {res.candidates} candidates to {res.folder}/pairs.jsonl")
    if not res.complete:
        import sys

        print(f"diffusionlab make-pairs: error: --n: found {res.pairs} of {res.asked} pairs "
              f"within the cap of {res.candidates} candidates (kept in {res.folder})", file=sys.stderr)
        print("hint: raise --max-samples, lower --margin, or use the pairs found", file=sys.stderr)
        return EXIT_USER
    return 0
