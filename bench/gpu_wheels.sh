#!/usr/bin/env bash
# Run HERE (a machine with a package registry), before bench/gpu_check.sh goes to a lent GPU machine, whose
# Python has torch, torchvision, h5py, click, numpy, scipy and pillow but no registry: downloads into
# bench/wheels/ (git-ignored; pass it to the device run with carry: ["bench/wheels"]) the wheels of the other
# third-party modules that the code gpu_check.py runs imports (pydantic and its parts, PyYAML, tqdm, trimesh:
# dataset discovery imports every dataset package; pytest and its parts for the CUDA-only tests), pinned to
# the versions installed here, for CPython 3.10-3.13 on x86-64 Linux (the lent machine's version is not known
# in advance; about 20 MB in all). Usage: bash bench/gpu_wheels.sh [python-version ...]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=bench/wheels
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(3.10 3.11 3.12 3.13)
PY=${PYTHON:-python3}
# name==version as installed here (what the test suite passes with); exceptiongroup and tomli only for 3.10
mapfile -t PINS < <("$PY" - <<'PYEOF'
import importlib.metadata as m
names = ["pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection", "PyYAML",
         "tqdm", "trimesh", "pytest", "pluggy", "iniconfig", "packaging", "Pygments"]
for name in names:
    print(f"{name}=={m.version(name)}")
print("exceptiongroup>=1")
print("tomli>=1")
PYEOF
)
mkdir -p "$DEST"
for v in "${VERSIONS[@]}"; do
  # --no-deps: exactly the pins above (numpy, torch and the rest are the lent machine's own)
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$DEST" "${PINS[@]}"
done
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST for CPython ${VERSIONS[*]}"
