"""The stage chain without DVC on a short noisy_aux run: evaluate and report outputs."""
import json

import yaml
from click.testing import CliRunner

from stages import evaluate, prepare, report, split, train


def test_report_for_many_auxiliaries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"dataset": "noisy_aux", "method": "auxilearn_linear", "seeds": [0, 1],
              "datasets": {"noisy_aux": {"train": {"steps": 60}}}, "methods": {"bilevel": {"hyper_every": 10}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "noisy_aux"]), (split.main, []), (train.main, []),
                      (evaluate.main, []), (report.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert "per_seed" not in metrics and metrics["seeds"] == 2 and metrics["steps"] == 60
    assert set(json.loads((tmp_path / "reports/per_seed.json").read_text())["per_seed"]) == {"seed_0", "seed_1"}
    text = (tmp_path / "reports/report.md").read_text()
    assert "Auxiliaries are ordered: label noise grows with the index" in text
    assert text.count("| aux_") == 10 and "| … | |" in text  # five most and five least weighted
    assert (tmp_path / "reports/figures/final_weights.png").stat().st_size > 1000
    # the outer update's own account: φ moved, the series' α·λ̂_max, how often the clip bound
    assert "## How φ learned" in text and "| combiner.auxnet.net.0.weight |" in text
    moved = float(text.split("| combiner.auxnet.net.0.weight | ")[1].split(" |")[0])
    assert moved > 0.01
    line = text.split("α·λ̂_max of the Neumann series at each curvature refresh: ")[1].split("\n")[0]
    low, median, high = (float(line.split(word + " ")[1].split(",")[0].split(" ")[0]) for word in ("min", "median", "max"))
    assert 0 < low <= median <= high < 2 and abs(median - 0.5) < 0.05, line  # α = 0.5 / λ̂ at each refresh
    assert "the hypergradient clip bound in 0% of them" in text
    assert "The curvature outgrew α" not in text  # α·λ̂ < 2 throughout: no series ended early
    # the curves dvc plots draws: train's live series, one per task and seed
    weights = (tmp_path / "reports/live/task_weight.tsv").read_text().splitlines()
    assert weights[0] == "step\tvalue\tseries" and {w.split("\t")[2] for w in weights[1:]} >= {"aux_1 · seed 0",
                                                                                          "aux_100 · seed 1"}
    assert len({w.split("\t")[2] for w in weights[1:]}) == 2 * 101
    assert (tmp_path / "reports/live/seed_1/plots/metrics/train/weight/aux_100.tsv").is_file()
    assert not (tmp_path / "reports/plots").exists()


def test_figures_are_0644_the_main_metric_first_and_the_device_named(tmp_path, monkeypatch):
    """toy2d: the report lists main_mse before weight_error (not alphabetically), names the device training
    used (not "auto"), and writes figures readable by all (umask 022), not tempfile's 0600."""
    import os

    monkeypatch.chdir(tmp_path)
    params = {"dataset": "toy2d", "method": "auxilearn_linear", "seeds": [0], "device": "auto",
              "datasets": {"toy2d": {"train": {"steps": 30, "eval_every": 10}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    old = os.umask(0o022)
    try:
        for cmd, args in ((prepare.main, ["--dataset", "toy2d"]), (split.main, []), (train.main, []),
                          (evaluate.main, []), (report.main, [])):
            result = runner.invoke(cmd, args)
            assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    figures = sorted((tmp_path / "reports/figures").iterdir())
    assert {f.name for f in figures} >= {"task_weights.png", "loss_landscape.png"}
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in figures), [(f.name, oct(f.stat().st_mode)) for f in figures]
    assert (tmp_path / "reports/report.md").stat().st_mode & 0o777 == 0o644
    text = (tmp_path / "reports/report.md").read_text()
    assert "| method | main_mse | weight_error |" in text
    assert "on device `cpu`" in text and "auto" not in text.split("\n")[2]


def test_a_run_too_short_for_a_curve_draws_no_empty_axes(tmp_path):
    import numpy as np

    from stages.report.figures import plot_series, plot_weights

    assert not plot_weights(np.array([1]), np.ones((1, 3)), ["main", "a", "b"], tmp_path / "w.png")
    assert not plot_series({"m": (np.array([5.0]), np.array([0.3]))}, "y", "t", tmp_path / "s.png")
    assert not list(tmp_path.iterdir())
    assert plot_weights(np.array([1, 2]), np.ones((2, 3)), ["main", "a", "b"], tmp_path / "w.png")
    assert (tmp_path / "w.png").stat().st_size > 1000


def test_the_main_metric_stays_first_where_it_is_not_first_alphabetically(tmp_path, monkeypatch):
    """metrics.json keeps the dataset's order (DVC shows a file's keys in order; sorted keys would put
    ``main_mse`` before ``weight_error`` whatever the main metric): pretend ``weight_error`` is toy2d's main one."""
    from pipeline.datasets.toy2d.task import Toy2D

    real = Toy2D.metrics
    monkeypatch.setattr(Toy2D, "metrics", lambda self, *a: dict(reversed(list(real(self, *a).items()))))
    monkeypatch.chdir(tmp_path)
    params = {"dataset": "toy2d", "method": "stl", "seeds": [0, 1], "datasets": {"toy2d": {"train": {"steps": 10}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "toy2d"]), (split.main, []), (train.main, []),
                      (evaluate.main, []), (report.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert list(metrics["test"]) == ["weight_error", "main_mse"]
    assert json.loads((tmp_path / "reports/per_seed.json").read_text())["main_metric"] == "weight_error"
    text = (tmp_path / "reports/report.md").read_text()
    assert "| method | weight_error | main_mse |" in text and "the main metric (`weight_error`) first" in text


def test_outer_update_summary_counts_the_series_series_stop_ended_early():
    from pipeline.engine.experiment import TrainedRun
    from stages.report.figures import outer_update_summary
    logs = [{"hypergrad_norm": 0.1, "series_cut": 0.0, "alpha_lambda": 0.5}, {"hypergrad_norm": 0.1, "series_cut": 1.0},
            {"hypergrad_norm": 0.1, "series_cut": 0.0, "alpha_lambda": 3.0}, {"hypergrad_norm": 0.1, "series_cut": 0.0}]
    runs = [TrainedRun(seed, None, None, None, {"method_log": logs}) for seed in (0, 1)]
    summary = outer_update_summary(runs)
    assert summary["hyper_steps"] == 4 and summary["series_cut_fraction"] == 0.25
    assert summary["alpha_lambda_over_2"] == 0.5 and summary["alpha_lambda_max"] == 3.0


def test_the_ranking_names_each_seeds_auc_where_one_seed_with_large_weights_decides_the_pooled_one():
    """Two seeds rank the helpful auxiliary first with small weights, one ranks it last with large ones: the AUC
    of the seed-mean weights is 0, and the per-seed line shows the two right seeds."""
    import numpy as np

    from stages.report import ranking_lines
    final = np.array([[0.06, 0.02], [1.4, 0.35], [3.2, 9.9]])  # helpful, irrelevant
    text = "\n".join(ranking_lines(final, ["normal", "depth"], {"normal": "helpful", "depth": "irrelevant"}))
    assert "helpful vs harmful (or irrelevant) auxiliaries: 0.00" in text
    assert "each seed's own final weights: 1.00, 1.00, 0.00 (mean 0.67)" in text
    one = "\n".join(ranking_lines(final[:1], ["normal", "depth"], {"normal": "helpful", "depth": "irrelevant"}))
    assert "auxiliaries: 1.00" in one and "each seed" not in one
