"""Code-shape numbers of a source tree (the core refactor's before / after table):

    python bench/code_metrics.py [SRC]      (default src/diffusionlab)

lines and files, files over 500 lines, functions over 60 and 40 lines (ast), getattr / hasattr
lines by what they probe, and the places that compare a process name or a conditioning kind
with a string literal."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PROCESS_NAMES = ("ddpm", "vp", "subvp", "ve", "edm", "ncsn")
COND_NAMES = ("class", "text", "image", "none", "small", "minilm")


def functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def string_compares(tree, names, subject: str) -> int:
    """Comparisons (==, !=, in, not in) of an expression whose source matches ``subject`` (e.g.
    "process") with one of ``names`` as a string literal."""
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and re.search(subject, ast.unparse(node.left)):
            parts = [node.left, *node.comparators]
            lits = [p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)]
            lits += [e.value for p in parts if isinstance(p, (ast.Tuple, ast.List, ast.Set))
                     for e in p.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if any(v in names for v in lits):
                n += 1
    return n


def main(src: Path) -> None:
    files = sorted(src.rglob("*.py"))
    total, big, long60, long40 = 0, [], [], []
    probes = {"argparse Namespace (a.)": 0, "other": 0}
    proc = cond = 0
    for f in files:
        text = f.read_text()
        total += len(text.splitlines())
        rel = f.relative_to(src)
        if len(text.splitlines()) > 500:
            big.append(f"{rel} {len(text.splitlines())}")
        tree = ast.parse(text)
        for fn, n in functions(tree):
            if n > 60:
                long60.append(f"{rel}:{fn.lineno} {fn.name} {n}")
            if n > 40:
                long40.append(f"{rel}:{fn.lineno} {fn.name} {n}")
        for line in text.splitlines():
            if re.search(r"\b(getattr|hasattr)\(", line):
                probes["argparse Namespace (a.)" if re.search(r"(getattr|hasattr)\(a,", line) else "other"] += 1
        proc += string_compares(tree, PROCESS_NAMES, r"process")
        cond += string_compares(tree, COND_NAMES, r"kind|cond\b|encoder|model_kind")
    print(f"src: {total} lines in {len(files)} files")
    print(f"files over 500 lines: {len(big)} {big}")
    print(f"functions over 60 lines: {len(long60)} {long60}")
    print(f"functions over 40 lines: {len(long40)}")
    print(f"getattr/hasattr lines: {sum(probes.values())} {probes}")
    print(f"comparisons with a process name literal: {proc}; with a conditioning kind / encoder literal: {cond}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "diffusionlab")
