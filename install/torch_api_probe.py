r"""Which of the torch APIs that diffusionlab uses a given torch release has (install/TORCH_AUDIT.md).

Reads the Python sources inside torch wheels (or an installed torch folder) and prints one row per
API: present / absent in each. It imports nothing from torch, so wheels for any Python version or
platform can be compared on this machine, e.g.

    pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux1_x86_64 \
        -d /tmp/tw torch==2.2.2
    python install/torch_api_probe.py /tmp/tw/torch-*.whl .venv/lib/python3.11/site-packages/torch

(the wheels are only read, never installed: no constraints file, as the project's pin other torch
versions.) Each probe is a plain text search in one file, chosen so that its presence means the API
is callable the way src/diffusionlab calls it; the table in TORCH_AUDIT.md names the call sites.
"""
from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

# (API as used, file inside the torch package, regular expression that must match there)
PROBES = [
    ("torch.amp.GradScaler(device)", "amp/__init__.py", r"from \.grad_scaler import GradScaler"),
    ("torch.autocast('cpu', dtype=float16)", "amp/autocast_mode.py",
     r"device == .cpu.:\s*\n\s*supported_dtype = \[torch\.bfloat16, torch\.float16\]"
     r"|device_supported_dtypes = \[torch\.bfloat16, torch\.float16\]"),
    ("nn.Module.compile()", "nn/modules/module.py", r"def compile\(self"),
    ("torch.compile", "__init__.py", r"\ndef compile\("),
    ("torch.compiler (module)", "compiler/__init__.py", r"."),
    ("F.scaled_dot_product_attention(attn_mask=)", "nn/functional.py", r"scaled_dot_product_attention"),
    ("  ... scale= keyword", "nn/functional.py", r"scaled_dot_product_attention\(query, key, value, attn_mask=None, dropout_p=0\.0,\s*is_causal=False, scale=None"),
    ("  ... enable_gqa= keyword", "nn/functional.py", r"enable_gqa"),
    ("torch._foreach_copy_", "_C/_VariableFunctions.pyi", r"def _foreach_copy_"),
    ("torch._foreach_lerp_", "_C/_VariableFunctions.pyi", r"def _foreach_lerp_"),
    ("checkpoint(use_reentrant=False)", "utils/checkpoint.py", r"use_reentrant"),
    ("torch.load(weights_only=True)", "serialization.py", r"weights_only"),
    ("torch.special.log_ndtr", "special/__init__.py", r"log_ndtr"),
    ("torch.random.fork_rng(devices=[])", "random.py", r"def fork_rng\(\s*devices"),
    ("nn.TransformerEncoder(enable_nested_tensor=)", "nn/modules/transformer.py", r"enable_nested_tensor"),
    ("nn.TransformerEncoderLayer(norm_first=)", "nn/modules/transformer.py", r"norm_first"),
    ("dist.all_gather_object", "distributed/distributed_c10d.py", r"def all_gather_object"),
    ("dist.broadcast_object_list", "distributed/distributed_c10d.py", r"def broadcast_object_list"),
    ("torch.cuda.is_bf16_supported", "cuda/__init__.py", r"def is_bf16_supported"),
    ("torch.backends.mps", "backends/mps/__init__.py", r"def is_available"),
    ("F.pixel_unshuffle", "_C/_VariableFunctions.pyi", r"def pixel_unshuffle"),
    ("torch.isin", "_C/_VariableFunctions.pyi", r"def isin\("),
    ("torch.nan_to_num", "_C/_VariableFunctions.pyi", r"def nan_to_num\("),
    ("torch.quantile", "_C/_VariableFunctions.pyi", r"def quantile\("),
    ("torch.linalg.solve", "linalg/__init__.py", r"\bsolve\b"),
    # the [onnx] extra's `export --format onnx` (models/export.py)
    ("torch.onnx.export(dynamo=True)", "onnx/__init__.py", r"dynamo: bool"),
    ("  ... external_data= keyword", "onnx/__init__.py", r"external_data: bool"),
    ("  ... dynamic_shapes= keyword", "onnx/__init__.py", r"dynamic_shapes:"),
    ("torch.export.Dim", "export/__init__.py", r"\"Dim\""),
    # not used by src/ (yet); listed so that a change that starts using one sees its floor
    ("(unused) torch.export.export", "export/__init__.py", r"def export\("),
    ("(unused) torch.nn.attention.sdpa_kernel", "nn/attention/__init__.py", r"def sdpa_kernel"),
    ("(unused) torch.get_default_device", "__init__.py", r"def get_default_device"),
    ("(unused) F.rms_norm", "nn/functional.py", r"def rms_norm"),
    ("(unused) torch.serialization.add_safe_globals", "serialization.py", r"def add_safe_globals"),
]


class Source:
    """A torch wheel (.whl) or an installed torch package folder."""

    def __init__(self, path: str):
        self.path = Path(path)
        if self.path.suffix == ".whl":
            self.zip = zipfile.ZipFile(self.path)
            self.names = set(self.zip.namelist())
            m = re.match(r"torch-([^-]+)-", self.path.name)
            self.label = m.group(1) if m else self.path.name
        else:
            self.zip = None
            version = self.path / "version.py"
            m = re.search(r"__version__\s*=\s*'([^']+)'", version.read_text()) if version.exists() else None
            self.label = m.group(1) if m else str(self.path)

    def read(self, rel: str) -> str | None:
        if self.zip is not None:
            name = "torch/" + rel
            return self.zip.read(name).decode("utf-8", "replace") if name in self.names else None
        p = self.path / rel
        return p.read_text("utf-8", "replace") if p.exists() else None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    sources = [Source(a) for a in argv]
    width = max(len(p[0]) for p in PROBES)
    print(f"{'API':<{width}}  " + "  ".join(f"{s.label:>12}" for s in sources))
    for api, rel, pattern in PROBES:
        cells = []
        for s in sources:
            text = s.read(rel)
            cells.append("yes" if text is not None and re.search(pattern, text) else "-")
        print(f"{api:<{width}}  " + "  ".join(f"{c:>12}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
