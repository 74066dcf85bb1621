"""Issue 15, numerical faults: a non-finite value in training stops the run at the step it appears, with its
cause named: the prepared data (folder, task, rows), W's optimiser (datasets.<name>.train.lr), or the method
setting that moved the offending parameters (methods.bilevel.lr, neumann_lr, methods.uncertainty.
init_log_variance, methods.gradnorm.lr, methods.labels.lr); the validation check names train.lr only when W is
the cause. Tiny runs (toy2d, noisy_aux, an in-memory blobs set); one run through the train stage."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.config.params import parse_params
from pipeline.core.faults import NumericalFault
from pipeline.core.io import load_npz, save_npz, write_manifest
from pipeline.core.registry import DATASETS
from pipeline.engine.training import train_run
from tests.conftest import _prepared

CPU = torch.device("cpu")
# Long enough for several outer updates, with validation far away: a fault must be found where it happens.
QUIET = {"steps": 30, "eval_every": 1000}


def _params(dataset: str, method: str, train: dict | None = None, methods: dict | None = None):
    return parse_params({"dataset": dataset, "method": method, "seeds": [0], "methods": methods or {},
                         "datasets": {dataset: {"train": {**QUIET, **(train or {})}}}})


def _fault(ds, data, splits, params) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fixed α beyond the curvature warns first; the fault is what matters
        with pytest.raises(NumericalFault) as info:
            train_run(ds, data, splits, params, 0, device=CPU)
    assert isinstance(info.value, FloatingPointError)  # one of pipeline.config.stage.EXPECTED_ERRORS: one clear line
    return str(info.value)


def _step(message: str) -> int:
    return int(re.search(r"at step (\d+)", message).group(1))


# -------------------------------------------------------------------------------- optimiser and method keys

# (method, train overrides, methods overrides, the key named, the step it fails at, a key that must NOT be named)
KEY_CASES = {
    "train_lr_huge": ("stl", {"lr": 1e30}, {}, "datasets.toy2d.train.lr", 2, None),
    "train_lr_huge_momentum": ("equal", {"lr": 1e30, "momentum": 0.9}, {}, "datasets.toy2d.train.momentum", 2, None),
    "train_lr_overflows_float32": ("stl", {"lr": 1e39}, {}, "datasets.toy2d.train.lr", 1, None),
    "bilevel_lr_huge": ("auxilearn_linear", {}, {"bilevel": {"lr": 1e30, "hyper_every": 5}},
                        "methods.bilevel.lr", 7, "train.lr"),
    "bilevel_lr_overflows": ("auxilearn_linear", {}, {"bilevel": {"lr": 1e39, "hyper_every": 5}},
                             "methods.bilevel.lr", 5, "train.lr"),
    "neumann_lr_huge": ("auxilearn_linear", {}, {"bilevel": {"neumann_lr": 1e30, "hyper_every": 5}},
                        "methods.bilevel.neumann_lr", 5, "bilevel.lr "),
    "neumann_lr_huge_nonlinear": ("auxilearn_nonlinear", {}, {"bilevel": {"neumann_lr": 1e30, "hyper_every": 5}},
                                  "methods.bilevel.neumann_lr", 5, "bilevel.lr "),
    "uncertainty_init_huge": ("uncertainty", {}, {"uncertainty": {"init_log_variance": 3e38}},
                              "methods.uncertainty.init_log_variance", 1, "train.lr"),
    "uncertainty_init_negative_huge": ("uncertainty", {}, {"uncertainty": {"init_log_variance": -1e4}},
                                       "methods.uncertainty.init_log_variance", 1, "train.lr"),
    "uncertainty_train_lr_huge": ("uncertainty", {"lr": 1e30}, {}, "datasets.toy2d.train.lr", 2, None),
    "gradnorm_lr_huge": ("gradnorm", {}, {"gradnorm": {"lr": 1e40}}, "methods.gradnorm.lr", 1, "train.lr"),
}


@pytest.mark.parametrize("case", KEY_CASES, ids=list(KEY_CASES))
def test_a_non_finite_loss_names_the_key_that_caused_it_at_its_step(case):
    method, train, methods, key, step, not_named = KEY_CASES[case]
    ds, data, splits = _prepared("toy2d")
    message = _fault(ds, data, splits, _params("toy2d", method, train, methods))
    assert key in message, message
    assert _step(message) == step, message
    assert "validation" not in message  # found at the step, not at the next validation (step 1000)
    assert f"{method} seed 0" in message
    if not_named:
        assert not_named not in message, message


def test_huge_outer_rates_fail_at_the_outer_step_not_at_validation():
    """φ's rate and the Neumann α: the outer update's own check, at the first outer step (hyper_every), with the
    inner step and the hyper step both named."""
    ds, data, splits = _prepared("toy2d")
    for bilevel, key in (({"neumann_lr": 1e30}, "methods.bilevel.neumann_lr"), ({"lr": 1e39}, "methods.bilevel.lr")):
        message = _fault(ds, data, splits, _params("toy2d", "auxilearn_linear",
                                                   methods={"bilevel": {**bilevel, "hyper_every": 3}}))
        assert "at step 3, in the outer update" in message and "hyper step 1" in message and key in message


@pytest.mark.parametrize("method", ["maxl", "maxl_first_order"])
@pytest.mark.parametrize("lr, step", [(1e30, 10), (1e39, 5)])
def test_maxl_theta2_non_finite_names_labels_lr(method, lr, step):
    from tests.test_labels import Blobs, fake_params, splits_for

    ds = Blobs()
    data = ds.make()
    message = _fault(ds, data, splits_for(len(data)), fake_params(method, lr=lr))
    assert "methods.labels.lr" in message and "θ2" in message, message
    assert _step(message) == step, message  # maxl_every 5: the second (or first) θ2 update


# ---------------------------------------------------------------------------------------------- the data


def _prepared_with(dataset: str, tmp_path: Path, array: str, row_of: str, column: int):
    """``dataset`` prepared into ``tmp_path`` with one NaN written into ``array`` (x or y) at the first row of
    split ``row_of``, as a hand-edited or badly generated prepared file would hold; loaded back."""
    params = parse_params({"dataset": dataset})
    ds = DATASETS.get(dataset)(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    splits = ds.make_splits(ds.load(tmp_path), params.split)
    row = int(splits[row_of][0])
    arrays = load_npz(tmp_path / "data.npz")
    arrays[array][row, column] = np.nan
    save_npz(tmp_path / "data.npz", **arrays)
    data = ds.load(tmp_path)
    assert ds.make_splits(data, params.split)[row_of][0] == row  # the split does not depend on the values
    return ds, data, splits, row


DATA_CASES = {
    # dataset, method, array, split holding the row, column, what the message names, step
    "noisy_aux_target": ("noisy_aux", "equal", "y", "train", 3, "targets of task 'aux_3' (column 3) in rows [{row}]", 1),
    "toy2d_target_main": ("toy2d", "stl", "y", "train", 0, "targets of task 'main' (column 0) in rows [{row}]", 1),
    "toy2d_input": ("toy2d", "equal", "x", "train", 1, "inputs of rows [{row}]", 1),
    # a row only in the auxiliary set: W never sees it; the outer update's batch does, at its first step
    "toy2d_aux_set_input": ("toy2d", "auxilearn_linear", "x", "aux", 0, "inputs of rows [{row}]", 20),
}


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_non_finite_data_names_the_prepared_folder_the_task_and_the_rows(case, tmp_path):
    dataset, method, array, row_of, column, named, step = DATA_CASES[case]
    ds, data, splits, row = _prepared_with(dataset, tmp_path, array, row_of, column)
    message = _fault(ds, data, splits, _params(dataset, method))
    assert f"data/prepared/{dataset}/" in message and named.format(row=row) in message, message
    assert "dvc repro prepare`" in message
    assert _step(message) == step, message
    assert "train.lr" not in message and "methods." not in message


def test_validation_names_the_data_when_only_a_validation_row_is_bad(tmp_path):
    ds, data, splits, row = _prepared_with("toy2d", tmp_path, "x", "val", 0)
    message = _fault(ds, data, splits, _params("toy2d", "stl", {"steps": 6, "eval_every": 3}))
    assert message.startswith("stl seed 0: the validation main loss is") and _step(message) == 3
    assert f"data/prepared/toy2d/ holds NaN/inf: inputs of rows [{row}]" in message
    assert "train.lr" not in message


def test_validation_names_train_lr_when_w_is_the_cause():
    """W's last update (step 1 of 1) made it diverge: only the validation sees it, and names W's optimiser."""
    ds, data, splits = _prepared("toy2d")
    message = _fault(ds, data, splits, _params("toy2d", "stl", {"steps": 1, "lr": 1e30}))
    assert "the validation main loss is" in message and _step(message) == 1
    assert "after step 1's update" in message and "datasets.toy2d.train.lr" in message


def test_finite_runs_are_unchanged_by_the_checks():
    """The check folds into the one float the history takes: a healthy run's logged losses are L_T's values."""
    ds, data, splits = _prepared("toy2d")
    result = train_run(ds, data, splits, _params("toy2d", "equal", {"steps": 5}), 0, device=CPU)
    assert all(np.isfinite(result.history["train_loss"])) and len(result.history["train_loss"]) == 2
    assert result.history["step"] == [1, 5]  # the logged steps (train.log_every 10): the first and the last


# ---------------------------------------------------------------------------------- through the train stage


def _snapshot(*folders: str) -> dict[str, bytes]:
    """Byte for byte, but reports/live/: the live log of a failed attempt is kept on purpose (it shows the loss
    up to the failure)."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.as_posix().startswith("reports/live/")}


STAGE_CASES = {
    # name: (method, methods overrides, whether the prepared data gets NaN, the start of the one error line)
    "nan_in_prepared_data": ("equal", {}, True,
                             "Error: equal seed 0: W's training loss is nan at step 1: the prepared data "
                             "data/prepared/toy2d/ holds NaN/inf: targets of task 'harmful' (column 2)"),
    "neumann_lr_huge": ("auxilearn_linear", {"bilevel": {"neumann_lr": 1e30, "hyper_every": 3}}, False,
                        "Error: auxilearn_linear seed 0: at step 3, in the outer update: methods.bilevel's hyper "
                        "step 1: the hypergradient of φ is nan: the Neumann series diverged"),
}


@pytest.mark.filterwarnings("ignore:.*neumann_lr.*:UserWarning")  # α·λ̂ ≥ 2 warns before the fault
@pytest.mark.parametrize("case", STAGE_CASES, ids=list(STAGE_CASES))
def test_train_stage_prints_one_line_naming_the_cause_and_leaves_outputs_untouched(case, tmp_path, monkeypatch):
    from stages import prepare, split, train

    method, methods, nan_data, expected = STAGE_CASES[case]
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({
        "dataset": "toy2d", "method": method, "seeds": [0, 1], "methods": methods,
        "datasets": {"toy2d": {"prepare": {"num_samples": 400}, "split": {"aux": 20, "val": 20, "test": 40},
                               "train": {"steps": 5, "eval_every": 1000}}}}))
    runner = CliRunner()
    assert runner.invoke(prepare.main, ["--dataset", "toy2d"]).exit_code == 0
    if nan_data:
        folder = Path("data/prepared/toy2d")
        arrays = load_npz(folder / "data.npz")
        arrays["y"][:, 2] = np.nan  # the harmful auxiliary's column, as a broken generator would write it
        save_npz(folder / "data.npz", **arrays)
        write_manifest(folder)  # a prepare that wrote NaN: the manifest matches the bad data
    assert runner.invoke(split.main, []).exit_code == 0
    for path, content in {"models/seed_0/model.pt": b"last good model", "reports/metrics.json": b"{}"}.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(content)
    before = _snapshot("data", "models", "reports")

    result = runner.invoke(train.main, [])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(expected), result.output
    assert "dvc repro prepare`" in errors[0] if nan_data else "methods.bilevel.neumann_lr" in errors[0]
    assert _snapshot("data", "models", "reports") == before
    assert [p.name for p in Path(".").iterdir() if p.name.startswith((".models", ".data"))] == []  # no leftovers
