"""The comparison table over experiments: latest run per method, paper order, mean ± SEM."""
from pipeline.compare import latest_per_method, render_table


def row(method, created, mse, dataset="toy2d", rev="abc"):
    return {"rev": rev, "Created": created, "reports/metrics.json:dataset": dataset,
            "reports/metrics.json:method": method, "test.mse.mean": mse, "test.mse.sem": 0.01}


def test_latest_run_per_method_in_paper_order():
    rows = [row("auxilearn_linear", "2026-01-02", 1.0), row("stl", "2026-01-01", 2.0),
            row("stl", "2026-01-03", 3.0), row("equal", "2026-01-01", 4.0, dataset="noisy_aux"),
            {"rev": "x", "Created": "2026-01-05", "reports/metrics.json:dataset": "toy2d",
             "reports/metrics.json:method": "equal", "test.mse.mean": None}]
    best = latest_per_method(rows, "toy2d")
    assert set(best) == {"auxilearn_linear", "stl"}
    assert best["stl"]["test.mse.mean"] == 3.0
    table = render_table(best).splitlines()
    assert table[0] == "| method | mse |"
    assert table[2] == "| stl | 3.000 ± 0.010 |"
    assert table[3] == "| auxilearn_linear | 1.000 ± 0.010 |"
