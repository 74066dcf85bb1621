#!/usr/bin/env bash
# The GPU check, one command on a lent GPU machine: bash bench/gpu_check.sh [--smoke] [gpu_check.py options]
# Its figures go to stdout and, when $OUT is set, to $OUT/gpu_check.txt. It drives the library directly (no
# DVC). Third-party modules the machine's Python lacks come from bench/wheels/ (made here beforehand by
# bench/gpu_wheels.sh, carried along): installed with pip --no-index into a private folder put first on
# PYTHONPATH, or, without pip, unpacked there (a wheel is a zip of its site-packages files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/auxbench_gpu_site}
mkdir -p "$SITE"
missing=$("$PY" - <<'PYEOF'
import importlib.util
# module -> distribution (wheel name prefix) of everything gpu_check.py's imports need beyond the machine's
need = {"pydantic": "pydantic", "pydantic_core": "pydantic_core", "annotated_types": "annotated_types",
        "typing_extensions": "typing_extensions", "typing_inspection": "typing_inspection", "yaml": "pyyaml",
        "tqdm": "tqdm", "trimesh": "trimesh", "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
        "packaging": "packaging", "pygments": "pygments"}
own = ["torch", "torchvision", "numpy", "scipy", "h5py", "click", "PIL"]  # the machine's own: no wheels carried
absent = [mod for mod in own if importlib.util.find_spec(mod) is None]
if absent:
    raise SystemExit(f"this Python lacks {', '.join(absent)}, which bench/gpu_check.sh expects the machine to have")
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [ -n "$missing" ]; then
  if [ ! -d bench/wheels ]; then
    echo "missing modules ($missing) and no bench/wheels/: run bash bench/gpu_wheels.sh where a registry is reachable" >&2
    exit 2
  fi
  # the pydantic family is installed together, so that its parts' versions match
  case " $missing " in *" pydantic "*|*" pydantic_core "*) missing="$missing pydantic pydantic_core annotated_types typing_extensions typing_inspection";; esac
  case " $missing " in *" pytest "*) missing="$missing pluggy iniconfig packaging pygments exceptiongroup tomli";; esac
  missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
  if "$PY" -m pip --version >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --find-links bench/wheels --no-deps --target "$SITE" --upgrade $missing \
      || { echo "pip could not install $missing from bench/wheels" >&2; exit 2; }
  else
    "$PY" - "$SITE" $missing <<'PYEOF'
import re, sys, sysconfig, zipfile
from pathlib import Path
site, wanted = sys.argv[1], {w.lower().replace("-", "_") for w in sys.argv[2:]}
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
for wheel in sorted(Path("bench/wheels").glob("*.whl")):
    name, _, rest = wheel.name.partition("-")
    if name.lower() in wanted and ("-py3-none-any" in wheel.name or f"-{tag}-" in wheel.name):
        zipfile.ZipFile(wheel).extractall(site)
        print("unpacked", wheel.name)
PYEOF
  fi
  echo "installed from bench/wheels into $SITE: $missing"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  "$PY" bench/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.txt"
else
  "$PY" bench/gpu_check.py "$@"
fi
