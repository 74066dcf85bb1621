"""The comparison table over experiments (pipeline.compare) from fabricated `dvc.api.exp_show` rows, the
metric directions it ranks by, and the validation metrics the `evaluate` stage writes for it."""
import json
from datetime import date

import click
import pytest
import yaml
from click.testing import CliRunner

from pipeline import compare
from pipeline.compare import (best_val_per_method, experiment_name, latest_per_method, mismatch_warnings, param,
                              render_table, run_seeds, run_steps, varying_params, with_commits)
from pipeline.metrics.summary import format_mean_sem, higher_is_better


@pytest.fixture(autouse=True)
def no_details(monkeypatch):
    """No test reads a real experiment's reports/per_seed.json unless it says so."""
    monkeypatch.setattr(compare, "read_details", lambda row: None)


def row(method, created, mse, dataset="toy2d", rev="abc"):
    return {"rev": rev, "Created": created, "reports/metrics.json:dataset": dataset,
            "reports/metrics.json:method": method, "test.mse.mean": mse, "test.mse.sem": 0.01}


def exp_row(method, val, test, *, name="exp", rev="1234567", typ="branch_commit", created="Nov 30, 2026",
            dataset="toy2d", main="main_mse", seeds="[0, 1]", steps=100.0, lr=0.003, state=None, **extra):
    """A row as dvc.api.exp_show returns it (DVC 3): params.yaml: / reports/metrics.json: prefixes only on
    the names both files have, lists and None as strings, integers as floats, every dataset's columns."""
    r = {"Experiment": name, "rev": rev, "typ": typ, "Created": created, "parent": None, "State": state,
         "Executor": None, "reports/metrics.json:dataset": dataset, "reports/metrics.json:method": method,
         "main_metric": main, f"test.{main}.mean": test, f"test.{main}.sem": 0.05,
         f"val.{main}.mean": val, f"val.{main}.sem": 0.02, "per_seed.seed_0.main_mse": test,
         "params.yaml:method": method, "params.yaml:dataset": dataset, "seeds": seeds, "device": "auto",
         f"datasets.{dataset}.train.steps": steps, "datasets.noisy_aux.train.steps": 2000.0,
         "methods.bilevel.lr": lr, "methods.bilevel.max_hypergrad_norm": "None", "methods.dwa.temperature": 2.0}
    r.update(extra)
    return r


def test_latest_run_per_method_in_paper_order():
    rows = [row("auxilearn_linear", "2026-01-02", 1.0), row("stl", "2026-01-01", 2.0),
            row("stl", "2026-01-03", 3.0), row("equal", "2026-01-01", 4.0, dataset="noisy_aux"),
            {"rev": "x", "Created": "2026-01-05", "reports/metrics.json:dataset": "toy2d",
             "reports/metrics.json:method": "equal", "test.mse.mean": None}]
    best = latest_per_method(rows, "toy2d")
    assert set(best) == {"auxilearn_linear", "stl"}
    assert best["stl"]["test.mse.mean"] == 3.0
    table = render_table(best).splitlines()
    assert table[0] == "| method | mse | steps | seeds | commit |"
    assert table[2] == "| stl | 3.000 ± 0.010 | ? | ? | ? |"  # seeds unknown: SEM kept
    assert table[3] == "| auxilearn_linear | 1.000 ± 0.010 | ? | ? | ? |"


def test_latest_reads_exp_show_created_formats():
    """exp show writes today's experiments as "02:05 PM" and older ones as "Nov 30, 2026": compared as
    strings, "11:40 AM" would beat "02:05 PM" and "Nov" would beat "Dec"."""
    older = exp_row("stl", 1.0, 1.0, name="older", created="Dec 01, 2025")
    old = exp_row("stl", 1.0, 2.0, name="old", created="Nov 30, 2026")
    morning = exp_row("stl", 1.0, 3.0, name="morning", created="11:40 AM")
    afternoon = exp_row("stl", 1.0, 4.0, name="afternoon", created="02:05 PM")
    assert latest_per_method([older, morning, afternoon, old], "toy2d")["stl"]["Experiment"] == "afternoon"
    midnight = exp_row("stl", 1.0, 6.0, name="midnight", created="12:01 AM")
    assert latest_per_method([midnight, morning], "toy2d")["stl"]["Experiment"] == "morning"
    assert latest_per_method([older, old], "toy2d")["stl"]["Experiment"] == "old"
    workspace = exp_row("stl", 1.0, 5.0, name=None, rev="workspace", typ="baseline", created=None)
    assert latest_per_method([afternoon, workspace], "toy2d")["stl"]["rev"] == "workspace"


def test_created_today_is_after_any_earlier_date():
    assert compare._created({"Created": "12:01 AM"}) > compare._created({"Created": date.today().replace(
        year=date.today().year - 1).strftime("%b %d, %Y")})


def test_params_read_back_from_exp_show_strings():
    r = exp_row("stl", 1.0, 1.0, seeds="[0, 1, 2]", steps=20.0, **{"params.yaml:seeds": "[3]"})
    assert param(r, "seeds") == [3]  # the prefixed name wins where both exist
    del r["params.yaml:seeds"]
    assert run_seeds(r) == [0, 1, 2] and run_steps(r, "toy2d") == 20
    assert param(r, "methods.bilevel.max_hypergrad_norm") is None and param(r, "device") == "auto"
    assert param(r, "method") == "stl" and param(r, "nothing") is None
    # the key named in the brief, with the file prefix (DVC adds it when two params files share a name)
    r2 = exp_row("stl", 1.0, 1.0, steps=None, **{"params.yaml:datasets.toy2d.train.steps": 30.0})
    assert run_steps(r2, "toy2d") == 30
    del r2["seeds"]
    assert run_seeds(r2) == [0]  # no seeds param: the seeds with per-seed test metrics
    assert run_steps(exp_row("stl", 1.0, 1.0, steps=None), "toy2d") is None


def test_with_commits_gives_each_experiment_its_baseline():
    rows = [exp_row("stl", 1, 1, name=None, rev="workspace", typ="baseline", created=None),
            exp_row("stl", 1, 1, name=None, rev="main", typ="baseline"),
            exp_row("equal", 1, 1, name="a", rev="aaaaaaa"), exp_row("equal", 1, 1, name="b", rev="bbbbbbb"),
            exp_row("stl", 1, 1, name=None, rev="1234abc", typ="baseline"),
            exp_row("dwa", 1, 1, name="c", rev="ccccccc", typ="branch_base")]
    assert [r["_commit"] for r in with_commits(rows)] == ["workspace", "main", "main", "main", "1234abc", "1234abc"]
    assert "_commit" not in rows[0]


def grid_rows():
    """A φ learning-rate grid of auxilearn_linear on toy2d (lower MSE better), plus stl and other noise."""
    return with_commits([
        exp_row("stl", 9.6, 9.4, name=None, rev="workspace", typ="baseline", created=None),
        exp_row("stl", 9.7, 9.5, name=None, rev="main", typ="baseline", created="Nov 29, 2026"),
        exp_row("auxilearn_linear", 9.50, 9.20, name="lr-small", lr=0.001),
        exp_row("auxilearn_linear", 9.30, 9.35, name="lr-big", lr=0.01),  # best on validation, not on test
        exp_row("auxilearn_linear", 9.40, 9.10, name="lr-mid", lr=0.003),
        exp_row("auxilearn_linear", float("nan"), 9.00, name="diverged", lr=0.1),
        exp_row("auxilearn_linear", 9.00, 9.00, name="queued", lr=0.2, state="Queued"),
        exp_row("auxilearn_linear", 1.00, 1.00, name="other-data", dataset="noisy_aux"),
        exp_row("stl", 9.65, 9.45, name="stl-exp", rev="ddddddd"),
    ])


def test_best_val_picks_the_best_validation_row_not_the_best_test_row():
    best, varying, notes = best_val_per_method(grid_rows(), "toy2d")
    assert set(best) == {"stl", "auxilearn_linear"}
    assert notes == ["auxilearn_linear: 1 of 4 experiments have a NaN validation main metric and are left out"]
    assert best["auxilearn_linear"]["Experiment"] == "lr-big"  # val 9.30 (test 9.35 is the worst of the three)
    assert best["stl"]["rev"] == "workspace"
    assert varying["auxilearn_linear"] == ["methods.bilevel.lr"]
    assert varying["stl"] == []


def test_best_val_higher_is_better_for_accuracy():
    rows = with_commits([exp_row("maxl", val, val, name=n, dataset="cifar10", main="accuracy", lr=lr,
                                 **{"datasets.cifar10.methods.labels.psi": psi})
                         for n, val, lr, psi in (("a", 60.0, 0.01, 5.0), ("b", 72.0, 0.01, 3.0),
                                                 ("c", 65.0, 0.01, 5.0))])
    best, varying, _ = best_val_per_method(rows, "cifar10")
    assert best["maxl"]["Experiment"] == "b"
    assert varying["maxl"] == ["datasets.cifar10.methods.labels.psi"]
    table = render_table(best, "cifar10", varying).splitlines()
    assert table[0] == ("| method | chosen (best validation) | val main metric | accuracy | steps | seeds | commit |")
    assert table[2] == ("| maxl | b: datasets.cifar10.methods.labels.psi=3 | accuracy 72.00 ± 0.02 | 72.00 ± 0.05 "
                        "| 100 | 0,1 | ? |")


def test_best_val_prefers_a_named_experiment_over_the_workspace_on_a_tie():
    rows = with_commits([exp_row("stl", 9.0, 9.0, name=None, rev="workspace", typ="baseline", created=None),
                         exp_row("stl", 9.5, 9.0, name=None, rev="main", typ="baseline"),
                         exp_row("stl", 9.0, 9.0, name="same-as-workspace", rev="eeeeeee")])
    best, _, _ = best_val_per_method(rows, "toy2d")
    assert best["stl"]["Experiment"] == "same-as-workspace" and best["stl"]["_commit"] == "main"


def test_best_val_leaves_out_rows_without_validation_metrics_and_says_so():
    old = row("stl", "2026-01-01", 2.0)  # before evaluate wrote val metrics
    rows = [old, exp_row("stl", 9.0, 9.1, name="new"), row("equal", "2026-01-01", 3.0)]
    best, _, notes = best_val_per_method(rows, "toy2d")
    assert set(best) == {"stl"} and best["stl"]["Experiment"] == "new"
    assert notes == [
        "stl: 1 of 2 experiments have no validation main metric (run before `evaluate` wrote it?) and are left out",
        "equal: 1 of 1 experiments have no validation main metric (run before `evaluate` wrote it?) and are left out"]


def test_best_val_refuses_rows_that_disagree_on_the_main_metric():
    rows = [exp_row("stl", 9.0, 9.0), exp_row("stl", 9.0, 9.0, main="weight_error")]
    with pytest.raises(click.ClickException, match="disagree on the main metric"):
        best_val_per_method(rows, "toy2d")


def test_varying_params_sees_overrides_set_in_only_some_rows():
    rows = [exp_row("auxilearn_linear", 1, 1), exp_row("auxilearn_linear", 1, 1,
                                                       **{"datasets.toy2d.methods.bilevel.lr": 0.03})]
    assert varying_params(rows, "toy2d") == ["datasets.toy2d.methods.bilevel.lr"]
    best, varying, _ = best_val_per_method(with_commits(rows), "toy2d")
    assert "datasets.toy2d.methods.bilevel.lr=0.01 (default)" in render_table(best, "toy2d", varying)


def test_table_shows_steps_seeds_commit_and_sem_only_from_two_seeds():
    rows = {"stl": with_commits([exp_row("stl", 9.0, 9.123456, rev="main", typ="baseline", seeds="[0]",
                                         steps=20.0)])[0],
            "equal": with_commits([exp_row("equal", 9.0, 9.5, rev="main", typ="baseline", seeds="[0, 1, 2]")])[0]}
    table = render_table(rows, "toy2d").splitlines()
    assert table[0] == "| method | main_mse | steps | seeds | commit |"
    assert table[2] == "| stl | 9.123 | 20 | 0 | main |"
    assert table[3] == "| equal | 9.500 ± 0.050 | 100 | 0,1,2 | main |"
    warnings = mismatch_warnings(rows, "toy2d")
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: the rows differ in steps (stl: 20; equal: 100)")
    assert warnings[1].startswith("warning: the rows differ in seeds (stl: [0]; equal: [0, 1, 2])")
    same = {"stl": rows["equal"], "equal": rows["equal"]}
    assert mismatch_warnings(same, "toy2d") == []


def test_metric_directions():
    for name in ("main_mse", "weight_error", "main_loss", "depth_abs_err", "depth_rel_err",
                 "normal_mean_deg", "normal_median_deg", "new_task_loss"):
        assert not higher_is_better(name), name
    for name in ("top1", "top3", "accuracy", "miou", "pixel_acc", "instance_miou", "class_miou",
                 "normal_within_11.25", "normal_within_22.5", "miou/Chair", "balanced_acc"):
        assert higher_is_better(name), name
    with pytest.raises(ValueError, match="no direction known for metric 'sharpness'"):
        higher_is_better("sharpness")


def test_format_mean_without_sem():
    assert format_mean_sem(9.12345, None) == "9.123"
    assert format_mean_sem(45.678, 1.234) == "45.68 ± 1.23"


def test_cli_best_val_and_latest_with_a_fake_exp_show(monkeypatch, tmp_path):
    import dvc.api

    raw = [{k: v for k, v in r.items() if k != "_commit"} for r in grid_rows()]
    raw[-1]["seeds"] = "[0]"  # stl-exp ran one seed
    calls = []
    monkeypatch.setattr(dvc.api, "exp_show", lambda num=1: calls.append(num) or raw)
    runner = CliRunner()
    result = runner.invoke(compare.main, ["--dataset", "toy2d", "--select", "best-val", "--commits", "3",
                                          "--output", str(tmp_path / "cmp.md")])
    assert result.exit_code == 0, result.output
    assert calls == [3]
    lines = result.stdout.splitlines()
    assert "the best validation main metric" in lines[0]
    assert lines[-2] == "| stl | workspace | main_mse 9.600 ± 0.020 | 9.400 ± 0.050 | 100 | 0,1 | workspace |"
    assert lines[-1] == ("| auxilearn_linear | lr-big: methods.bilevel.lr=0.01 | main_mse 9.300 ± 0.020 "
                         "| 9.350 ± 0.050 | 100 | 0,1 | main |")
    assert result.stderr == ("note: auxilearn_linear: 1 of 4 experiments have a NaN validation main metric "
                             "and are left out\n")
    assert (tmp_path / "cmp.md").read_text() == result.stdout

    result = runner.invoke(compare.main, ["--dataset", "toy2d"])  # latest: stl-exp (one seed) is newer than main
    assert result.exit_code == 0, result.output
    assert "latest experiment per method" in result.stdout
    assert "| stl | 9.400 ± 0.050 | 100 | 0,1 | workspace |" in result.stdout
    monkeypatch.setattr(dvc.api, "exp_show", lambda num=1: [raw[-1], raw[2]])
    result = runner.invoke(compare.main, ["--dataset", "toy2d"])
    assert "| stl | 9.450 | 100 | 0 | ? |" in result.stdout
    assert result.stderr == ("warning: the rows differ in seeds (stl: [0]; auxilearn_linear: [0, 1]); "
                             "their numbers are not like for like\n")

    result = runner.invoke(compare.main, ["--dataset", "cub", "--select", "best-val"])
    assert result.exit_code != 0 and "no experiment with validation and test metrics on dataset 'cub'" in result.output


def new_row(method, test, *, name="exp", rev="1234567", typ="branch_commit", created="Nov 30, 2026",
            dataset="toy2d", main="main_mse", seeds="[0, 1]", steps=100.0, **extra):
    """A row with the summary metrics.json (test mean/SEM main first, steps, seeds count, device): method and
    dataset come from params.yaml, validation from reports/per_seed.json (not in the row)."""
    r = {"Experiment": name, "rev": rev, "typ": typ, "Created": created, "parent": None, "State": None,
         "Executor": None, f"test.{main}.mean": test, f"test.{main}.sem": 0.05, "test.other_err.mean": 1.0,
         "test.other_err.sem": 0.0, "steps": steps, "reports/metrics.json:seeds": 2.0,
         "reports/metrics.json:device": "cpu", "method": method, "dataset": dataset,
         "params.yaml:seeds": seeds, "params.yaml:device": "auto", "methods.bilevel.lr": 0.003}
    r.update(extra)
    return r


def test_summary_rows_read_validation_from_per_seed_json(monkeypatch):
    details = {"aaaaaaa": {"main_metric": "main_mse", "val": {"main_mse": {"mean": 9.5, "sem": 0.1}}},
               "bbbbbbb": {"main_metric": "main_mse", "val": {"main_mse": {"mean": 9.2, "sem": 0.1}}}}
    read = []
    monkeypatch.setattr(compare, "read_details", lambda r: read.append(r["rev"]) or details.get(r["rev"]))
    rows = with_commits([new_row("stl", 9.4, name=None, rev="main", typ="baseline"),
                         new_row("auxilearn_linear", 9.0, name="a", rev="aaaaaaa", **{"methods.bilevel.lr": 0.01}),
                         new_row("auxilearn_linear", 9.3, name="b", rev="bbbbbbb", steps=50.0)])
    best, varying, notes = best_val_per_method(rows, "toy2d")
    assert best["auxilearn_linear"]["Experiment"] == "b" and "stl" not in best
    assert notes == ["stl: 1 of 1 experiments have no validation main metric (run before `evaluate` wrote it?) "
                     "and are left out"]
    assert sorted(set(read)) == ["aaaaaaa", "bbbbbbb", "main"]
    assert run_seeds(rows[1]) == [0, 1] and run_steps(rows[2], "toy2d") == 50  # the steps metric, no param
    table = render_table(best, "toy2d", varying).splitlines()
    assert table[0] == ("| method | chosen (best validation) | val main metric | main_mse | other_err | steps | seeds "
                        "| commit |")  # the main metric first, as metrics.json lists it
    assert table[2] == ("| auxilearn_linear | b: methods.bilevel.lr=0.003 | main_mse 9.200 ± 0.100 | 9.300 ± 0.050 "
                        "| 1.000 ± 0.000 | 50 | 0,1 | main |")
    latest = latest_per_method(rows, "toy2d")
    assert set(latest) == {"stl", "auxilearn_linear"}


def test_evaluate_writes_the_summary_and_keeps_validation_and_seeds_apart(tmp_path, monkeypatch):
    from stages import evaluate, prepare, split, train

    monkeypatch.chdir(tmp_path)
    params = {"dataset": "toy2d", "method": "stl", "seeds": [0, 1], "datasets": {"toy2d": {"train": {"steps": 20}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "toy2d"]), (split.main, []), (train.main, []),
                      (evaluate.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    text = (tmp_path / "reports/metrics.json").read_text()
    metrics = json.loads(text)
    # the summary only, the main metric first in the file (DVC shows columns in file order), 7 columns
    assert list(metrics) == ["test", "steps", "seeds", "device"]
    assert list(metrics["test"]) == ["main_mse", "weight_error"] and text.index("main_mse") < text.index("weight_error")
    assert all(set(v) == {"mean", "sem"} for v in metrics["test"].values())
    assert (metrics["steps"], metrics["seeds"], metrics["device"]) == (20, 2, "cpu")
    flat = [k for k in text.split('"') if k in ("per_seed", "val", "seed_0", "main_metric", "method")]
    assert flat == []
    details = json.loads((tmp_path / "reports/per_seed.json").read_text())
    assert details["main_metric"] == "main_mse" and (details["method"], details["dataset"]) == ("stl", "toy2d")
    assert set(details["val"]) == {"main_mse", "weight_error"} and set(details["val"]["main_mse"]) == {"mean", "sem"}
    assert set(details["per_seed"]) == set(details["per_seed_val"]) == {"seed_0", "seed_1"}
    assert details["val"]["main_mse"]["mean"] != metrics["test"]["main_mse"]["mean"]
    assert details["val"]["weight_error"] == metrics["test"]["weight_error"]  # a property of w, not of the split
    live = json.loads((tmp_path / "reports/live/metrics.json").read_text())
    assert list(live) == ["live"] and list(live["live"]) == ["seed", "step", "main_loss", "val_loss"]
    assert live["live"]["seed"] == 1 and live["live"]["step"] == 20


@pytest.mark.slow
def test_best_val_over_a_real_dvc_grid(tmp_path):
    """A φ learning-rate grid with real `dvc exp run` in a throw-away copy, then compare --select best-val."""
    import os
    import subprocess
    from pathlib import Path

    src = Path(__file__).resolve().parents[1]
    repo = tmp_path / "repo"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=src, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (src / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_bytes((src / rel).read_bytes())
    (repo / "dvc.lock").unlink(missing_ok=True)
    from tests.conftest import small_default_params

    params = small_default_params()  # the schema's defaults (small stand-ins), whatever the workspace holds
    params["dataset"] = "toy2d"
    params["seeds"] = [0]
    params["datasets"]["toy2d"]["train"]["steps"] = 20
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    section = "bilevel" if "bilevel" in params["methods"] else "auxilearn"  # where φ's learning rate lives

    def run(*cmd):
        proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    run("git", "init", "-q", "-b", "main")
    run("git", "add", "-A")
    run(*commit, "copy")
    run("dvc", "repro")
    run("git", "add", "-A")
    run(*commit, "baseline")
    for lr in ("1e-3", "3e-2"):
        run("dvc", "exp", "run", "-S", "method=auxilearn_linear", "-S", f"++methods.{section}.lr={lr}")
    proc = run("python", "-m", "pipeline.compare", "--dataset", "toy2d", "--select", "best-val")

    import dvc.api
    rows = [r for r in dvc.api.exp_show(repo=str(repo)) if r.get("rev") != "workspace"]
    assert [r.get("Experiment") is not None for r in rows] == [False, True, True]  # the baseline and two experiments
    # validation is in reports/per_seed.json (not a DVC metric), read at each experiment's revision
    val = {r["rev"]: json.loads(dvc.api.read("reports/per_seed.json", repo=str(repo), rev=r["rev"]))
           ["val"]["main_mse"]["mean"] for r in rows}
    assert not any(k.startswith("val.") for r in rows for k in r)
    lowest = min(val.values())
    # the baseline does not write the key (params.yaml holds only overrides): compare shows the default
    from pipeline.config.params import parse_params

    default = parse_params({"dataset": "toy2d"}).method_config(section).lr
    expected = {experiment_name(r): (f"{param(r, f'methods.{section}.lr'):g}" if param(r, f"methods.{section}.lr")
                                      is not None else f"{default:g} (default)") for r in rows if val[r["rev"]] == lowest}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("| auxilearn_linear |"))
    chosen = line.split(" | ")[1]
    name = chosen.split(":")[0]
    assert name in expected and chosen == f"{name}: methods.{section}.lr={expected[name]}", (line, expected)
    assert line.endswith("| 20 | 0 | main |") and "±" not in line, line
    assert proc.stderr == ""


def test_per_category_breakdowns_stay_out_of_the_summary():
    """``miou/<category>`` values would add two columns per category to `dvc exp show`: per_seed.json has them."""
    from pipeline.metrics.summary import summary_metrics

    test = {"instance_miou": {"mean": 50.0, "sem": 1.0}, "miou/bump": {"mean": 60.0, "sem": 2.0},
            "main_loss": {"mean": 0.8, "sem": 0.1}}
    out = summary_metrics(test, 300, 3, "cpu")
    assert list(out["test"]) == ["instance_miou", "main_loss"]
    assert (out["steps"], out["seeds"], out["device"]) == (300, 3, "cpu")


def test_an_unwritten_param_shows_its_default_with_the_datasets_override():
    """params.yaml holds only overrides: the baseline of a grid has no value for the swept key, so the table
    shows what ran (the section's default under the dataset's own override), marked as the default."""
    from pipeline.compare import _param_cell, default_value

    assert default_value("methods.bilevel.hyper_every", "toy2d", "auxilearn_linear") == 20
    assert default_value("methods.bilevel.hyper_every", "demo", "auxilearn_linear") == 10  # demo's override
    assert default_value("datasets.demo.methods.bilevel.hyper_every", "demo", "auxilearn_linear") == 10
    assert _param_cell({}, "methods.bilevel.hyper_every", "demo", "auxilearn_linear") == "10 (default)"
    assert _param_cell({"params.yaml:methods.bilevel.hyper_every": "5"}, "methods.bilevel.hyper_every", "demo",
                       "auxilearn_linear") == "5"
