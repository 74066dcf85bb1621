"""The user's three commands from the defaults, on a fresh copy of the repository (slow: real `dvc` runs).

`dvc exp run -S method=<m>` must work from the committed params.yaml for a method of every family (given
auxiliaries, a ConvNet over loss images, generated auxiliary labels, point-cloud reconstruction); an impossible
method/dataset pair stops in `validate` with the datasets that fit, leaving params.yaml as it was; and the
default `dvc exp show` stays readable.
"""
import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_repository

pytestmark = pytest.mark.slow
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}

# One method of each family; every registered method is measured from the defaults by bench/user_commands.py.
FAMILIES = ["equal", "auxilearn_convnet", "maxl", "dae"]


def run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """The repository as committed (params.yaml untouched), as a new user clones it."""
    return copy_repository(tmp_path_factory.mktemp("fresh"))


@pytest.mark.parametrize("method", FAMILIES)
def test_every_family_runs_from_the_defaults(fresh: Path, method: str):
    run(fresh, "dvc", "exp", "run", "-S", f"method={method}")
    run_info = json.loads((fresh / "reports/per_seed.json").read_text())
    assert run_info["method"] == method and len(run_info["per_seed"]) == 3  # the default seeds
    assert run_info["main_metric"] in json.loads((fresh / "reports/metrics.json").read_text())["test"]
    assert (fresh / "reports/report.md").is_file()


def test_an_impossible_pair_stops_in_validate_and_leaves_params_as_they_were(fresh: Path):
    before = (fresh / "params.yaml").read_text()
    proc = run(fresh, "dvc", "exp", "run", "-S", "method=maxl", "-S", "dataset=toy2d", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "method maxl needs a dataset with generated_labels" in out and "datasets that fit:" in out, out
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == ["Running stage 'validate':"]
    assert (fresh / "params.yaml").read_text() == before
    assert "method: maxl" in (fresh / "params.rejected.yaml").read_text()  # the refused file, kept


def test_exp_show_is_readable(fresh: Path):
    """The default view: the main metric's test mean among the first ten columns; params only the run's
    selectors (nothing else is overridden); metrics the summary only (no per-seed or validation values)."""
    shown = run(fresh, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    header = next(csv.reader(io.StringIO(shown)))
    main = json.loads((fresh / "reports/per_seed.json").read_text())["main_metric"]
    assert f"test.{main}.mean" in header[:10], header
    params = [c for c in header if c.split(":")[-1] in {"method", "dataset", "seeds", "device", "threads"}
              or c.startswith(("datasets.", "methods.", "usefulness."))]
    assert {c.split(":")[-1] for c in params} == {"method", "dataset", "seeds", "device", "threads"}, params
    assert not any(c.startswith(("per_seed.", "val.")) for c in header), header  # no per-seed or validation metric
    deps = [c for c in header if c.startswith(("pipeline/", "stages/", "data/", "models", "params.yaml", "reports/"))
            and ":" not in c]  # a dependency path, not a metric DVC prefixes with its file
    assert len(header) - len(deps) <= 30, header  # what a reader compares: DVC's own, metrics and params
    # one column per code package or data path a stage reads (dvc.yaml); three are dataset_code's: its code, every
    # dataset package and the member hashes it writes (DVC cannot list a pair's member folders from params)
    assert len(deps) <= 24, deps
    assert "params.yaml" not in deps, deps  # validate reads the whole file as params, not as a file
    assert len(header) <= 47, header  # the table view drops rev, typ and parent: 44 on the demo

