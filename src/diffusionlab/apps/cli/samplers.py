"""``diffusionlab samplers``: the sampler registry (core.samplers.SAMPLERS)."""
from __future__ import annotations

from . import options


def register(sub) -> None:
    p = sub.add_parser("samplers", help="list the registered samplers")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each sampler's knobs")
    p.set_defaults(run=run, param_flags=options.param_flags(p))


def run(a) -> int:
    import inspect

    from ...core.samplers import SAMPLERS
    from .common import knob_names

    print(f"{'name':<19} {'order':>5} {'stochastic':>10} {'NFE/step':>8}  description")
    for name, s in SAMPLERS.items():
        nfe = "adaptive" if not s.fixed_nfe else s.nfe_per_step
        print(f"{name:<19} {s.order:>5} {str(s.stochastic):>10} {nfe:>8}  {s.description}")
        params = inspect.signature(s.fn).parameters
        knobs = [f"{k}={params[k].default!r}" for k in knob_names(name)]
        if knobs and a.verbose:
            print(f"{'':<19} knobs: {', '.join(knobs)}")
    print("\nNFE/step: network calls per grid interval (the final step to sigma = 0 takes one); "
          "knobs: `diffusionlab samplers -v`, set with `sample --opt KEY=VALUE`.")
    return 0
