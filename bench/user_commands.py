"""The user's commands on a fresh clone, timed: `dvc repro` from the defaults, then `dvc exp run -S method=<m>`
for every registered method (or those named), then `dvc exp show`'s column count.

    python bench/user_commands.py                   # every method (about 19 runs)
    python bench/user_commands.py stl,maxl,dae      # some

It clones the current commit (HEAD) into a temporary folder, so uncommitted changes are not measured. Prints one
row per command: seconds, and the main metric's test mean ± SEM from reports/metrics.json.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def sh(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def main_metric(repo: Path) -> str:
    name = json.loads((repo / "reports/per_seed.json").read_text())["main_metric"]
    summary = json.loads((repo / "reports/metrics.json").read_text())["test"][name]
    return f"{name} {summary.get('mean', float('nan')):.4f} ± {summary.get('sem', float('nan')):.4f}"


def timed(repo: Path, *cmd: str) -> tuple[float, str]:
    start = time.perf_counter()
    sh(repo, *cmd)
    return time.perf_counter() - start, main_metric(repo)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from pipeline.core.registry import DATASETS, METHODS

    demo = DATASETS.get("demo")  # every method that fits the default dataset (not nearest_neighbour)
    methods = sys.argv[1].split(",") if len(sys.argv) > 1 else [m for m in METHODS.names()
                                                                  if not METHODS.get(m).missing(demo)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "clone"
        sh(REPO, "git", "clone", "-q", str(REPO), str(repo))
        rows = [("dvc repro (defaults)", *timed(repo, "dvc", "repro"))]
        for method in methods:
            rows.append((f"dvc exp run -S method={method}", *timed(repo, "dvc", "exp", "run", "-S", f"method={method}")))
        header = next(csv.reader(io.StringIO(sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout)))
    print("| command | seconds | test main metric (mean ± SEM over the seeds) |\n|---|---|---|")
    for command, seconds, metric in rows:
        print(f"| `{command}` | {seconds:.0f} | {metric} |")
    print(f"\n`dvc exp show --no-pager --csv`: {len(header)} columns; the first ten: {', '.join(header[:10])}")


if __name__ == "__main__":
    main()
