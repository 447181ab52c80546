"""Old module paths of the flat tree (before the layered regroup) keep importing, for one
release: ``import diffusionlab.denoiser`` gives ``diffusionlab.core.denoiser`` itself (the same
module object, so monkeypatching either name patches both). Resolved lazily on first import by
a meta-path finder, so ``import diffusionlab`` stays as cheap as before."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {  # old name (under diffusionlab.) -> new name
    **{m: f"core.{m}" for m in ("rng", "files", "cond", "schedules", "process", "sde", "devices", "protocol",
                                "denoiser", "losses", "guidance", "samplers", "sampling", "likelihood")},
    **{m: f"models.{m}" for m in ("diffusion", "continuous", "processes", "checkpoint", "loading")},
    "viz": "evaluation.viz", "cli": "apps.cli", "demo": "apps.demo",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the real module: its attributes stay its own

    def exec_module(self, module):
        """Nothing to run: ``create_module`` returned the target module, already executed."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    prefix = __name__.rpartition(".")[0] + "."

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.prefix):
            return None
        rest = fullname[len(self.prefix):]
        head, _, tail = rest.partition(".")
        if head not in MOVED:
            return None
        new = self.prefix + MOVED[head] + ("." + tail if tail else "")
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before the path finder: an old name is never loaded twice
