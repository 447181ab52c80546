"""``diffusionlab noise``: a forward-noising strip of one image (the seeds' cat figure)."""
from __future__ import annotations

from pathlib import Path

from ...core.schedules import BETA_SCHEDULES
from ...errors import UserError
from . import options


def register(sub) -> None:
    p = sub.add_parser("noise", help="forward-noising strip of an image (the seeds' cat example)")
    p.add_argument("--image", default="cat", help="cat (scikit-image photo) | mnist | path/to/image")
    p.add_argument("--t", type=options.ints, default=(0, 50, 100, 150, 199), help="timesteps, e.g. 0,50,100,150,199")
    p.add_argument("--timesteps", type=int, default=200)
    p.add_argument("--schedule", default="linear", choices=tuple(BETA_SCHEDULES), help="beta schedule")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="noising.png")
    p.set_defaults(run=run, param_flags=options.param_flags(p, {"spec": "--image"}))


def run(a) -> int:
    import torch

    from ...core.schedules import DiscreteSchedule
    from ...evaluation.viz import save_noising_strip

    bad = [t for t in a.t if not 0 <= t <= a.timesteps]
    if bad:
        raise UserError(f"--t values {bad} are outside 0..{a.timesteps} (t=0 is the clean image)")
    sched = DiscreteSchedule.from_name(a.schedule, a.timesteps)
    img = image_tensor(a.image, a.size)
    save_noising_strip(img, sched.abar.float(), list(a.t), a.out, generator=torch.Generator().manual_seed(a.seed))
    print(f"wrote {a.out}")
    return 0


def image_tensor(spec: str, size: int):
    """One image [3, size, size] in [-1, 1] (or MNIST's first held-out digit), centre-cropped."""
    if spec == "mnist":
        from ...data import load_mnist

        return load_mnist("heldout", size)[0]
    from ...pipelines.inputs import square_resized

    return square_resized(_cat() if spec == "cat" else _open(spec), size, 3)


def _cat():
    from PIL import Image

    try:
        from skimage import data as skdata
    except ImportError:
        raise UserError("the cat photo comes from scikit-image: pip install scikit-image") from None
    return Image.fromarray(skdata.chelsea())


def _open(spec: str):
    from PIL import Image

    if not Path(spec).is_file():
        raise UserError(f"no such image file: {spec}", param="spec")
    try:
        return Image.open(spec).convert("RGB")
    except Exception as e:  # PIL raises many types for unreadable files
        raise UserError(f"cannot read image {spec}: {e}", param="spec") from None
