"""``diffusionlab distill``: a 1-8 step student of a trained model (``training.distill``) on the
project's trainer. The training flags are ``train``'s own rows of ``train.FLAGS`` with their meaning
there (``--steps`` = optimizer steps, over all stages for progressive); the network, process and
conditioning come from the teacher."""
from __future__ import annotations

import json
from pathlib import Path

from ...core.files import atomic_write
from ...errors import UserError
from ...training.distill import DEFAULT_STEPS_TO, DISTILL_LR, GUIDANCE_RANGE, METHODS, PD_START_STEPS
from . import options
from .finetune import TRAINING_FLAGS, add_run_options, training_fields
from .train import PARAMS

STAGE_DONE = "stage.json"  # written into a progressive stage's folder when it finished (resume skips it)


def _range(text: str) -> tuple:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected LOW,HIGH (e.g. 1,5), got {text!r}") from None
    return lo, hi


def register(sub) -> None:
    p = sub.add_parser("distill", help="distil a trained model into a 1-8 step student (consistency or progressive)",
                       description="Distil --ckpt (the teacher, never written) into a student that samples in "
                                   "--steps-to steps. consistency: ECT-style consistency tuning of an unconditional "
                                   "teacher, LCM-style consistency distillation of a class or text teacher with its "
                                   "guidance distilled in (the student takes --guidance as an input: one network call "
                                   "a step); sampled with the consistency sampler at any step count. progressive: "
                                   "halving stages from the teacher's DDIM grid of --start-steps steps (Salimans & Ho "
                                   "2022); sampled with DDIM on its grid. The student is an ordinary checkpoint for "
                                   f"--ckpt. Defaults: lr {DISTILL_LR:g}, the teacher's batch size, conditioning "
                                   "dropout 0.1 (README 'Few-step generation').")
    p.add_argument("--ckpt", required=True, help="the teacher: a run or checkpoint directory (never written)")
    p.add_argument("--method", choices=METHODS, required=True, help="consistency or progressive")
    p.add_argument("--steps-to", type=int, default=None,
                   help="the student's sampling steps, a power of two (default: consistency "
                        f"{DEFAULT_STEPS_TO['consistency']}, progressive {DEFAULT_STEPS_TO['progressive']})")
    p.add_argument("--start-steps", type=int, default=PD_START_STEPS,
                   help=f"progressive: the teacher's DDIM steps the first stage halves ({PD_START_STEPS})")
    p.add_argument("--guidance-range", type=_range, default=GUIDANCE_RANGE, metavar="LOW,HIGH",
                   help="a class / text teacher: the CFG scales distilled in (default "
                        f"{GUIDANCE_RANGE[0]:g},{GUIDANCE_RANGE[1]:g})")
    p.add_argument("--no-guidance", action="store_true",
                   help="a class / text teacher: distil it unguided (no scale input; sample the student at scale 1)")
    p.add_argument("--stage-steps", type=int, default=100,
                   help="consistency: optimizer steps per stage; the gap t - r halves each stage (100)")
    for f in TRAINING_FLAGS:
        f.add_to(p)
    add_run_options(p, "continue the distillation in --out (each unfinished stage from its newest checkpoint)")
    p.set_defaults(run=run, param_flags=options.param_flags(p, {
        **PARAMS, "steps_to": "--steps-to", "start_steps": "--start-steps", "guidance_range": "--guidance-range",
        "stage_steps": "--stage-steps", "method": "--method"}))


def run(a) -> int:
    from ...training.distill import check_steps_to, distill_config

    fields = training_fields(a, "the student")
    guidance = None if a.no_guidance else a.guidance_range
    if a.method == "progressive":
        return _progressive(a, fields, guidance)
    steps_to = check_steps_to(a.steps_to if a.steps_to is not None else DEFAULT_STEPS_TO["consistency"])
    cfg = distill_config(a.ckpt, "consistency", steps_to, guidance_range=guidance, stage_steps=a.stage_steps, **fields)
    summary = _train(a, cfg, a.resume)
    print(json.dumps(summary, indent=2))
    return options.finished("distill", summary)


def _train(a, cfg, resume: bool) -> dict:
    from ...training import Trainer

    trainer = Trainer(config=cfg, resume=resume, overwrite=a.overwrite, strict_resume=a.strict_resume)
    if trainer.cfg.distill is None or trainer.cfg.distill.teacher_sha256 != cfg.distill.teacher_sha256:
        raise UserError(f"the run in {cfg.out_dir} does not distil {cfg.distill.teacher}", param="ckpt")
    return trainer.train()


def _progressive(a, fields: dict, guidance) -> int:
    """The halving stages in turn: stage k's teacher is stage k-1's student (OUT/stages/N), the last
    stage writes OUT; --steps and --time-budget are split evenly over the stages."""
    from ...core import distributed
    from ...training.distill import load_teacher, check_steps_to, progressive_stages, stage_config

    steps_to = check_steps_to(a.steps_to if a.steps_to is not None else DEFAULT_STEPS_TO["progressive"])
    stages = progressive_stages(load_teacher(a.ckpt), steps_to, check_steps_to(a.start_steps, "start_steps"))
    n = len(stages)
    fields.pop("out_dir", None)  # each stage has its own folder
    if fields.get("max_steps"):
        if fields["max_steps"] < n:
            raise UserError(f"{n} stages need at least {n} steps", param="max_steps")
        fields["max_steps"] //= n
    if fields.get("time_budget"):
        fields["time_budget"] /= n
    teacher, summaries = a.ckpt, []
    for k, grids in enumerate(stages):
        out = Path(a.out) if k == n - 1 else Path(a.out) / "stages" / f"{len(grids[0]) - 1}-steps"
        if a.resume and (out / STAGE_DONE).exists():
            teacher = str(out)
            continue
        resume = a.resume and (out / "checkpoints").exists()
        cfg = stage_config(teacher, grids, str(out), guidance_range=guidance, **fields)
        summaries.append(_train(a, cfg, resume))
        if summaries[-1].get("status") in ("interrupted", "terminated"):  # --resume continues this stage
            print(json.dumps(summaries[-1], indent=2))
            return options.finished("distill", summaries[-1])
        if distributed.world().main:  # under a launcher: one writer
            atomic_write(out / STAGE_DONE, json.dumps({"steps": len(grids[0]) - 1, "teacher": teacher}))
        teacher = str(out)
    print(json.dumps(summaries[-1] if summaries else {"resumed": "every stage had finished"}, indent=2))
    return 0
