"""The layers of the package, enforced: every import (module level and inside functions, where
the code imports lazily) points to the same layer or a lower one, and no two modules import
each other through any chain. docs/ARCHITECTURE.md draws the same picture."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffusionlab"

# module or package (dotted, inside the package) -> layer; the longest matching prefix decides
LAYERS = {
    # L0 foundations: randomness, atomic files, the condition type, schedules, the process and its
    # closed forms, SDEs, devices
    "core.rng": 0, "core.files": 0, "core.faults": 0, "core.cond": 0, "core.schedules": 0, "core.process": 0, "core.sde": 0,
    "core.devices": 0, "core.distributed": 0, "errors": 0,
    # L1 the math core over the sigma-space denoiser
    "core.protocol": 1, "core.denoiser": 1, "core.losses": 1, "core.guidance": 1, "core.samplers": 1,
    "core.sampling": 1, "core.likelihood": 1, "core": 1,
    # L2 networks
    "nn": 2,
    # L3 front-ends and storage (data, prompts to conditions)
    "models": 3, "data": 3, "text": 3,
    # L4 procedures
    "training": 4, "evaluation": 4, "pipelines": 4, "finetune": 4,
    # L5 applications
    "apps": 5, "__main__": 5,
}
EXEMPT = {"__init__"}  # the package root re-exports every layer


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def _imports(path: Path):
    """(line, imported module path inside the package) for every import of the file."""
    mod = _module_name(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    if mod == "__init__":
        pkg = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else list(pkg)
                target = base + (node.module.split(".") if node.module else [])
                if node.module is None:  # from . import x
                    for alias in node.names:
                        yield node.lineno, ".".join(target + [alias.name])
                    continue
                yield node.lineno, ".".join(target)
            elif node.module and node.module.split(".")[0] == "diffusionlab":
                yield node.lineno, ".".join(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "diffusionlab":
                    yield node.lineno, ".".join(alias.name.split(".")[1:])


def _files():
    return sorted(SRC.rglob("*.py"))


def _top(mod: str) -> str:
    """The LAYERS key of a module: its longest listed prefix."""
    if not mod:
        return "__init__"
    parts = mod.split(".")
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k])
        if key in LAYERS or key in EXEMPT:
            return key
    return parts[0]


def test_every_module_has_a_layer():
    missing = sorted({_top(_module_name(f)) for f in _files()} - set(LAYERS) - EXEMPT)
    assert not missing, f"add these modules to LAYERS (and docs/ARCHITECTURE.md): {missing}"


def test_imports_never_point_upward():
    bad = []
    for f in _files():
        me = _top(_module_name(f))
        if me in EXEMPT:
            continue
        for line, target in _imports(f):
            other = _top(target)
            if other in LAYERS and LAYERS[other] > LAYERS[me]:
                bad.append(f"{f.relative_to(SRC)}:{line} (L{LAYERS[me]} {me}) imports {target} (L{LAYERS[other]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def _resolve(target: str, known: set) -> str | None:
    """The module file a dotted target names (a name imported from a module maps to the module)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def test_no_import_cycles():
    graph = {}
    known = {_module_name(f) for f in _files()}
    for f in _files():
        me = _module_name(f)
        if me == "__init__":
            continue
        deps = set()
        for _, target in _imports(f):
            dep = _resolve(target, known)
            if dep and dep != me and dep != "__init__":
                deps.add(dep)
        graph[me] = deps
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("snippet,expected", [
    ("from ..viz import to_uint8\n", "viz"), ("from .folder import x\n", "data.folder"),
    ("def f():\n    from ..apps.demo import sample_many\n", "apps.demo"), ("import diffusionlab.cli\n", "cli")])
def test_the_import_scanner_sees_lazy_and_relative_imports(tmp_path, snippet, expected, monkeypatch):
    fake = SRC / "data" / "_layer_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: snippet if self == fake else Path.read_bytes(self).decode())
    assert [t for _, t in _imports(fake)] == [expected]
