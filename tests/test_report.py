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
    assert set(metrics["per_seed"]) == {"seed_0", "seed_1"}
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
    header = (tmp_path / "reports/plots/weights.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "main", "aux_1"] and len(header) == 102
