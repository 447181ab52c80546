#!/usr/bin/env bash
# `make test-install`: the wheel, installed the way a user installs it, into a fresh venv that
# already holds another torch (the one install/constraints-install.txt pins, from local disk).
#   1. build the wheel from a copy of the checkout (tracked + untracked, not ignored files): dist/
#   2. a fresh venv (.venv-install, removed first), torch==PINNED first, then the wheel, no extras
#   3. install/check.py base: torch kept, no extra's package, all package data (against the copy the
#      wheel was built from), every module imports, --help, a tiny train + sample run
#   4. the same wheel with [text,app,finetune,interop,onnx,tensorboard]; install/check.py extras
#   5. a summary: versions, venv sizes, wall times. The venv is removed on success (KEEP=1 keeps it)
# and kept on failure. Every pip call passes the constraints file (-c). Exit 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY=${PY:-python3}
VENV=${INSTALL_VENV:-.venv-install}
CONSTRAINTS=install/constraints-install.txt
EXTRAS=${INSTALL_EXTRAS:-text,app,finetune,interop,onnx,tensorboard}
DIST=dist
TORCH=$(sed -n 's/^torch==\([^[:space:]#;]*\).*/\1/p' "$CONSTRAINTS")
[ -n "$TORCH" ] || { echo "test-install: $CONSTRAINTS pins no torch==VERSION" >&2; exit 2; }

T0=$(date +%s)
STEP_T=$T0
declare -a TIMES=()
say() { printf '\n== test-install: %s\n' "$*"; }
lap() {  # lap NAME: record the seconds since the last lap
    local now; now=$(date +%s)
    TIMES+=("$(printf '%-34s %4d s' "$1" $((now - STEP_T)))")
    STEP_T=$now
}
mib() { du -sm "$1" | cut -f1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/diffusionlab-test-install.XXXXXX")
STATUS=1
finish() {
    rm -rf "$WORK"
    if [ "$STATUS" -ne 0 ]; then
        echo
        echo "test-install: FAILED (after $(( $(date +%s) - T0 )) s); the venv is kept for a look: $VENV" >&2
    fi
}
trap finish EXIT

say "Python $($PY -c 'import sys; print(sys.version.split()[0])') ($PY); torch pinned to $TORCH by $CONSTRAINTS"

# 1. the wheel ------------------------------------------------------------------------------------
say "building the wheel"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
pip_() {  # pip "$@", less this machine's pip.conf noise about its local index (exit status kept)
    "${PIP[@]}" "$@" 2>&1 | { grep -v "^WARNING: Location 'file:.*' is ignored: it is neither a file nor a directory\.$" || true; }
}
SRC=$WORK/src
mkdir -p "$SRC"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # exactly what a clean checkout (plus new, not ignored files) holds: no stale build/ or egg-info
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        if [ -f "$f" ]; then printf '%s\0' "$f"; fi
    done | tar --null -T - -cf - | tar -xf - -C "$SRC"
else
    tar --exclude='./.venv*' --exclude=./runs --exclude=./dist --exclude=./build -cf - . | tar -xf - -C "$SRC"
fi
mkdir -p "$DIST"
rm -f "$DIST"/diffusionlab-*.whl
pip_ wheel -q --no-deps -c "$CONSTRAINTS" -w "$DIST" "$SRC"
WHEEL=$(ls "$DIST"/diffusionlab-*.whl)
WHEEL_ABS=$ROOT/$WHEEL
echo "built $WHEEL ($(du -k "$WHEEL" | cut -f1) KiB, $("$VENV/bin/python" -c "import sys, zipfile; print(len(zipfile.ZipFile(sys.argv[1]).namelist()))" "$WHEEL") files)"
lap "build the wheel"

# 2. torch first, then the wheel without extras ---------------------------------------------------
say "fresh venv $VENV: torch==$TORCH first"
pip_ install -q -c "$CONSTRAINTS" "torch==$TORCH"
lap "install torch==$TORCH"
SIZE_TORCH=$(mib "$VENV")

say "the wheel, no extras"
pip_ install -q -c "$CONSTRAINTS" "$WHEEL_ABS"
lap "install the wheel (base)"
SIZE_BASE=$(mib "$VENV")

say "install/check.py base"
"$VENV/bin/python" install/check.py base --constraints "$CONSTRAINTS" --source "$SRC/src/diffusionlab"
lap "check base (incl. train + sample)"

# 3. all extras ------------------------------------------------------------------------------------
say "the wheel with [$EXTRAS]"
pip_ install -q -c "$CONSTRAINTS" "$WHEEL_ABS[$EXTRAS]"
lap "install the extras"
SIZE_EXTRAS=$(mib "$VENV")

say "install/check.py extras"
"$VENV/bin/python" install/check.py extras --constraints "$CONSTRAINTS" --source "$SRC/src/diffusionlab"
lap "check extras"

# 4. summary ---------------------------------------------------------------------------------------
VERSIONS=$("$VENV/bin/python" - "$EXTRAS" <<'EOF'
import importlib.metadata as md, sys
names = ["diffusionlab", "torch", "numpy", "diffusers", "datasets", "peft", "sentence-transformers",
         "transformers", "fastapi", "uvicorn", "onnx", "onnxscript", "onnxruntime", "tensorboard"]
def version(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return "-"
print(", ".join(f"{n} {version(n)}" for n in names))
EOF
)
say "summary: passed"
echo "wheel:    $WHEEL"
echo "versions: $VERSIONS"
echo "venv:     ${SIZE_TORCH} MiB with torch alone; ${SIZE_BASE} MiB after the base install (+$((SIZE_BASE - SIZE_TORCH)) MiB);" \
     "${SIZE_EXTRAS} MiB after [$EXTRAS] (+$((SIZE_EXTRAS - SIZE_BASE)) MiB)"
for t in "${TIMES[@]}"; do echo "time:     $t"; done
echo "wall:     $(( $(date +%s) - T0 )) s in all"
STATUS=0
if [ "${KEEP:-0}" = 1 ]; then
    echo "kept:     $VENV (KEEP=1)"
else
    rm -rf "$VENV"
fi
