"""amazon (DTG-AuxL's recommendation scenario): the loader on fixtures in the public files' formats (2014 and 2018,
gzip'd and plain, one clear error per bad line), the chronological periods and the aux set, train-period
vocabularies with the OOV id, the stand-in's determinism and CTR roles, AutoInt on a hand case, DTG-AuxL's
regression label, and a few training steps of dtg_auxl and auxilearn_linear."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.core.registry import DATASETS, METHODS, MODELS
from pipeline.datasets.amazon.config import Config, SplitConfig
from pipeline.datasets.amazon.splits import chronological_splits
from pipeline.datasets.amazon.task import Amazon
from pipeline.datasets.shared.base import DataError
from pipeline.engine.training import train_run
from pipeline.methods.base import Batch, Method
from pipeline.methods.dtg.config import DTGConfig
from pipeline.models.autoint import InteractingLayer

DAY = 86_400
# (user, item, rating, day) in file order (not time order); items b1..b3 have metadata, b4 has none
REVIEWS = [("u1", "b1", 5.0, 3), ("u2", "b1", 2.0, 1), ("u1", "b2", 4.0, 2), ("u3", "b3", 1.0, 4),
           ("u2", "b2", 3.0, 5), ("u1", "b3", 5.0, 6), ("u2", "b3", 4.0, 7), ("u3", "b1", 2.0, 8),
           ("u4", "b2", 5.0, 9), ("u1", "b4", 4.0, 10)]
META_2014 = [{"asin": "b1", "title": "a", "categories": [["Toys & Games", "Games", "Board Games"]]},
             {"asin": "b2", "categories": [["Toys & Games", "Puzzles"], ["Other", "x"]]},
             {"asin": "b3", "categories": [["Toys & Games"]]},
             {"asin": "zz", "categories": [["Toys & Games", "Unreviewed"]]}]


def _write(path: Path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_2014(root: Path, gz: bool = True) -> None:
    """reviews as JSON lines, metadata as Python literals (the 2014 release's forms)."""
    ext = ".gz" if gz else ""
    _write(root / f"reviews_Toys_and_Games_5.json{ext}", [json.dumps(
        {"reviewerID": u, "asin": a, "reviewerName": "n", "helpful": [0, 0], "reviewText": "t", "overall": r,
         "summary": "s", "unixReviewTime": 1_300_000_000 + d * DAY, "reviewTime": "01 1, 2011"})
        for u, a, r, d in REVIEWS])
    _write(root / f"meta_Toys_and_Games.json{ext}", [repr(m) for m in META_2014])


def write_2018(root: Path) -> None:
    """2018's names and fields: ``category`` (one path), ``vote``/``verified`` in reviews; plain files."""
    _write(root / "Toys_and_Games_5.json", [json.dumps(
        {"overall": r, "verified": True, "reviewTime": "01 1, 2011", "reviewerID": u, "asin": a,
         "unixReviewTime": 1_300_000_000 + d * DAY, "vote": "2"}) for u, a, r, d in REVIEWS])
    _write(root / "meta_Toys_and_Games.json", [json.dumps(
        {"asin": m["asin"], "main_cat": "Toys & Games", "category": m["categories"][0]}) for m in META_2014])


def prepare_path(root: Path, out: Path, **kw) -> Amazon:
    ds = Amazon()
    ds.prepare(Config(source="path", root=str(root), train_fraction=0.6, val_fraction=0.2, **kw), out)
    return ds


@pytest.mark.parametrize("layout", ["2014_gz", "2014_plain", "2018_plain"])
def test_loader_reads_the_public_formats_in_time_order(tmp_path, layout):
    root, out = tmp_path / "raw", tmp_path / "out"
    root.mkdir(), out.mkdir()
    write_2018(root) if layout == "2018_plain" else write_2014(root, gz=layout == "2014_gz")
    data = prepare_path(root, out).load(out)
    order = np.argsort([d for *_, d in REVIEWS])
    assert torch.equal(data.targets[:, 0], torch.tensor([REVIEWS[i][2] for i in order]))
    assert torch.equal(data.targets[:, 1], (data.targets[:, 0] > 3).float())  # CTR = rating > 3
    assert np.diff(data.meta["time"]).min() >= 0
    assert data.meta["period"].tolist() == [0] * 6 + [1] * 2 + [2] * 2
    # time order: u2 b1 | u1 b2 | u1 b1 | u3 b3 | u2 b2 | u1 b3 || u2 b3 | u3 b1 || u4 b2 | u1 b4
    user, item, cat = data.inputs.T.tolist()
    assert user == [1, 2, 2, 3, 1, 2, 1, 3, 0, 2]  # ids by first appearance in the training period; u4: OOV
    assert item == [1, 2, 1, 3, 2, 3, 3, 1, 2, 0]  # b4 first reviewed in the test period: OOV
    # level 1 of the first path; a one-level path gives its root; b4 has no metadata: 0
    assert cat == [1, 2, 1, 3, 2, 3, 3, 1, 2, 0]
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["category"] == ["Games", "Puzzles", "Toys & Games"] and vocab["user"] == ["u2", "u1", "u3"]
    assert data.meta["vocab_sizes"] == [4, 4, 4] and data.meta["oov_share"]["test"]["user"] == 0.5
    assert data.meta["train_rating_mean"] == pytest.approx(np.mean([2, 4, 5, 1, 3, 5]))
    assert "aux_roles" not in data.meta  # real data has no roles


def test_category_level_zero_is_the_root(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    root.mkdir(), out.mkdir()
    write_2014(root)
    data = prepare_path(root, out, category_level=0).load(out)
    assert set(data.inputs[:8, 2].tolist()) == {1}  # every reviewed item with metadata: "Toys & Games"


@pytest.mark.parametrize("bad,match", [
    ("{not json", r"reviews_Toys_and_Games_5\.json\.gz:3: not a JSON object"),
    ('{"reviewerID": "u", "asin": "a", "unixReviewTime": 5}', r"\.json\.gz:3: missing field 'overall'"),
    ('{"reviewerID": "u", "asin": "a", "overall": 7, "unixReviewTime": 5}', r":3: overall = 7.0 is not a rating"),
    ('{"reviewerID": "u", "asin": "a", "overall": 4, "unixReviewTime": "x"}', r":3: field 'unixReviewTime'"),
    ('[1, 2]', r":3: expected an object, got list"),
])
def test_a_malformed_line_names_the_file_and_line(tmp_path, bad, match):
    root, out = tmp_path / "raw", tmp_path / "out"
    root.mkdir(), out.mkdir()
    write_2014(root)
    path = root / "reviews_Toys_and_Games_5.json.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    _write(path, lines[:2] + [bad] + lines[2:])
    with pytest.raises(DataError, match=match):
        prepare_path(root, out)


def test_missing_files_and_truncated_gzip_are_data_errors(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    root.mkdir(), out.mkdir()
    (root / "README.md").write_text("placeholder")
    with pytest.raises(DataError, match="holds no data yet"):
        prepare_path(root, out)
    write_2014(root)
    (root / "meta_Toys_and_Games.json.gz").unlink()
    with pytest.raises(DataError, match="no metadata file: expected one of meta_Toys_and_Games.json.gz"):
        prepare_path(root, out)
    write_2014(root)
    path = root / "reviews_Toys_and_Games_5.json.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"reviews_Toys_and_Games_5\.json\.gz: not readable"):
        prepare_path(root, out)


def test_chronological_split_and_the_aux_set(tmp_path):
    period = np.array([0] * 80 + [1] * 10 + [2] * 10)
    s = chronological_splits(period, SplitConfig(aux_fraction=0.1, seed=3))
    assert len(s["aux"]) == 8 and len(s["train"]) == 72
    assert s["val"].tolist() == list(range(80, 90)) and s["test"].tolist() == list(range(90, 100))
    assert set(s["train"]) | set(s["aux"]) == set(range(80)) and not set(s["train"]) & set(s["aux"])
    again = chronological_splits(period, SplitConfig(aux_fraction=0.1, seed=3))
    other = chronological_splits(period, SplitConfig(aux_fraction=0.1, seed=4))
    assert np.array_equal(s["aux"], again["aux"]) and not np.array_equal(s["aux"], other["aux"])
    latest = chronological_splits(period, SplitConfig(aux_fraction=0.1, aux_from="latest"))
    assert latest["aux"].tolist() == list(range(72, 80))
    with pytest.raises(ValueError, match="aux_fraction"):
        chronological_splits(np.array([0, 0, 1, 2]), SplitConfig(aux_fraction=0.1))


STANDIN = {"standin_users": 12, "standin_items": 10, "standin_categories": 3, "standin_reviews": 100}


def test_standin_is_deterministic_in_the_real_format_and_its_periods_are_in_time(tmp_path):
    ds = Amazon()
    for name, extra in (("a", {}), ("b", {}), ("c", {"standin_seed": 1})):
        (tmp_path / name).mkdir()
        ds.prepare(Config(**STANDIN, **extra), tmp_path / name)
    raw = "raw_standin/reviews_Toys_and_Games_5.json.gz", "raw_standin/meta_Toys_and_Games.json.gz", "data.npz"
    for f in raw:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / raw[0]).read_bytes() != (tmp_path / "c" / raw[0]).read_bytes()
    first = json.loads(gzip.decompress((tmp_path / "a" / raw[0]).read_bytes()).splitlines()[0])
    assert {"reviewerID", "asin", "overall", "unixReviewTime"} <= set(first)
    meta_line = gzip.decompress((tmp_path / "a" / raw[1]).read_bytes()).decode().splitlines()[0]
    assert meta_line.startswith("{'asin': ")  # Python literals, as the 2014 metadata
    data = ds.load(tmp_path / "a")
    assert data.inputs.shape == (100, 3) and data.inputs.dtype == torch.int64
    assert set(data.targets[:, 0].tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    period, time = data.meta["period"], data.meta["time"]
    assert time[period == 0].max() <= time[period == 1].min() <= time[period == 2].min()
    assert data.meta["aux_roles"] == {"ctr": "helpful"}


def test_ctr_flip_makes_the_auxiliary_a_coin_flip(tmp_path):
    ds = Amazon()
    ds.prepare(Config(**{**STANDIN, "standin_reviews": 2000, "standin_users": 60, "standin_items": 50},
                      ctr_flip=0.5, ctr_flip_seed=1), tmp_path)
    data = ds.load(tmp_path)
    agree = float((data.targets[:, 1] == (data.targets[:, 0] > 3).float()).float().mean())
    assert abs(agree - 0.5) < 0.05 and data.meta["aux_roles"] == {"ctr": "irrelevant"}


def test_methods_fit_and_defaults_parse():
    for method in ("stl", "equal", "uncertainty", "gcs", "auxilearn_linear", "dtg_auxl"):
        assert not METHODS.get(method).missing(Amazon), method
    params = parse_params({"dataset": "amazon", "method": "dtg_auxl"})
    assert params.method_config("dtg").hyper_every == 30  # [A §4.3]: N ∈ {30, 50, 100}
    with pytest.raises(Exception, match="needs a dataset with generated_labels"):
        parse_params({"dataset": "amazon", "method": "maxl"})


# ------------------------------------------------------------------------------------------- AutoInt


def test_interacting_layer_on_a_hand_case():
    """1 head, identity W_Q, W_K, W_V, W_res, two fields e1 = (1, 2), e2 = (3, −1):
    ⟨e1, e1⟩ = 5, ⟨e1, e2⟩ = 1, ⟨e2, e2⟩ = 10; out_f = ReLU(Σ_k softmax_k⟨e_f, e_k⟩ e_k + e_f)."""
    layer = InteractingLayer(2, heads=1, head_dim=2)
    for lin in (layer.query, layer.key, layer.value, layer.residual):
        torch.nn.init.eye_(lin.weight)
    e = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    a = math.exp(5) / (math.exp(5) + math.exp(1))  # field 1 attends to itself
    b = math.exp(1) / (math.exp(1) + math.exp(10))  # field 2 attends to field 1
    f1 = [a * 1 + (1 - a) * 3 + 1, a * 2 + (1 - a) * -1 + 2]
    f2 = [b * 1 + (1 - b) * 3 + 3, max(0.0, b * 2 + (1 - b) * -1 - 1)]
    assert torch.allclose(layer.attention(e)[0, 0], torch.tensor([[a, 1 - a], [b, 1 - b]]))
    assert torch.allclose(layer(e), torch.tensor([[f1, f2]]), atol=1e-6)
    assert f2[1] == 0.0  # the ReLU bites on this entry


def test_autoint_shapes_oov_row_and_head_bias():
    net = MODELS.get("autoint")(field_sizes=[5, 4, 3], task_outputs=[1, 1], embed_dim=6, layers=2, heads=2,
                                head_dim=3, head_layers=2, output_bias=[4.0, 0.0])
    x = torch.tensor([[1, 2, 0], [4, 3, 2]])
    z = net.encode(x)
    rating, ctr = net.decode(z)
    assert z.shape == (2, 3 * 2 * 3) and rating.shape == (2, 1) and ctr.shape == (2, 1)
    assert all(float(emb.weight[0].detach().abs().sum()) == 0 for emb in net.embeddings)  # OOV: zero
    rating.sum().backward()
    assert all(float(emb.weight.grad[0].abs().sum()) == 0 for emb in net.embeddings)  # and never trained
    assert float(net.heads[0][-1].bias.detach()) == 4.0


def test_losses_and_metrics_by_hand(tmp_path):
    ds = Amazon()
    ds.prepare(Config(**STANDIN), tmp_path)
    data = ds.load(tmp_path)
    model = ds.build_model(data, ds.model_cfg)
    idx = torch.arange(20)
    with torch.no_grad():
        rating, ctr = model(data.inputs[idx])
    y = data.targets[idx]
    losses = ds.per_task_losses((rating, ctr), y)
    assert torch.allclose(losses[:, 0], (rating[:, 0] - y[:, 0]) ** 2)
    assert torch.allclose(losses[:, 1], torch.nn.functional.binary_cross_entropy_with_logits(
        ctr[:, 0], y[:, 1], reduction="none"))
    m = ds.metrics(model, data, idx)
    assert list(m)[0] == "rmse" and m["rmse"] == pytest.approx(float(losses[:, 0].mean().sqrt()), rel=1e-5)
    assert m["mae"] == pytest.approx(float((rating[:, 0] - y[:, 0]).abs().mean()), rel=1e-5)


# ------------------------------------------------------------------------------- DTG-AuxL on a regression


def _dtg(tmp_path: Path, cfg: DTGConfig) -> tuple[Amazon, object, Method, torch.nn.Module]:
    ds = Amazon()
    ds.prepare(Config(**STANDIN), tmp_path)
    data = ds.load(tmp_path)
    params = parse_params({"dataset": "amazon", "method": "dtg_auxl", "seeds": [0]})
    torch.manual_seed(0)
    method = Method(METHODS.get("dtg_auxl"), data.num_tasks, cfg, None, ds, data, params)
    return ds, data, method, ds.build_model(data, ds.model_cfg)


def test_dtg_regression_label_is_the_primary_plus_a_learned_shift(tmp_path):
    ds, data, method, model = _dtg(tmp_path, DTGConfig())
    gen = method.generator
    assert gen.regression and gen.num_classes == 1 and gen.head.out_features == 1
    rows = torch.arange(16)
    batch = Batch(data.inputs[rows], data.targets[rows], rows, torch.ones(16, dtype=torch.bool))
    z = model.encode(batch.x)
    perm = torch.arange(16).flip(0)
    g = gen.generate(z, ds, batch, perm)
    y = batch.y[:, :1]
    assert torch.allclose(g.bias, y) and torch.allclose(g.label, y + g.scores)
    assert torch.allclose(g.loss, ((gen.head(g.feature) - g.label) ** 2)[:, 0])
    assert float(gen.regulariser(g).detach()) == pytest.approx(float((g.scores.detach() ** 2).mean()))
    losses, _ = method.batch_losses(model, ds, batch)
    assert losses.shape == (16, 3) and set(gen.step_log(type("C", (), {"step": 1})())) == {
        "dtg_score_mean", "dtg_score_std"}
    _, _, pair, _ = _dtg(tmp_path / "p", DTGConfig(label_bias="pair"))
    g2 = pair.generator.generate(z, ds, batch, perm)
    assert torch.allclose(g2.bias, (y + y[perm]) / 2)
    with pytest.raises(ValueError, match="regression"):
        _dtg(tmp_path / "m", DTGConfig(label_form="mean"))


@pytest.mark.parametrize("method", ["dtg_auxl", "auxilearn_linear"])
def test_a_few_training_steps(tmp_path, method):
    raw = {"prepare": STANDIN, "train": {"steps": 4, "eval_every": 2, "batch_size": 16},
           "methods": {"dtg": {"hyper_every": 2}, "bilevel": {"hyper_every": 2}}}  # the dataset's N wins
    params = parse_params({"dataset": "amazon", "method": method, "seeds": [0], "datasets": {"amazon": raw}})
    ds = DATASETS.get("amazon")(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    result = train_run(ds, data, ds.make_splits(data, params.split), params, 0, torch.device("cpu"))
    h = result.history
    assert h["step"][-1] == 4 and h["hyper_step"] == [2, 4] and all(math.isfinite(v) for v in h["train_loss"])
    moved = [k for k, v in result.method_state_initial.items() if not torch.equal(v, result.method_state_final[k])]
    assert moved  # φ took its upper steps
    if method == "dtg_auxl":
        assert any(k.startswith("generator.label_generator") for k in moved)
        assert [e["step"] for e in h["method_log"] if "dtg_score_std" in e] == [1, 2, 3, 4]


def test_stage_chain_runs_on_amazon(tmp_path, monkeypatch):
    """prepare, split, train, evaluate, report and usefulness as the DVC stages run them (without DVC), dtg_auxl
    on a tiny stand-in: RMSE is the main metric, lower is better, and the report is written."""
    import yaml
    from click.testing import CliRunner

    from stages import evaluate, prepare, report, split, train, usefulness

    monkeypatch.chdir(tmp_path)
    params = {"dataset": "amazon", "method": "dtg_auxl", "seeds": [0],
              "datasets": {"amazon": {"prepare": STANDIN, "train": {"steps": 4, "eval_every": 2, "batch_size": 16},
                                      "methods": {"dtg": {"hyper_every": 2}}}},
              "usefulness": {"batches": 1, "batch_size": 8, "cg_iters": 3, "head_steps": 2, "stl_steps": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "amazon"]), (split.main, []), (train.main, []),
                      (evaluate.main, []), (report.main, []), (usefulness.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert list(metrics["test"])[:2] == ["rmse", "mae"] and math.isfinite(metrics["test"]["rmse"]["mean"])
    assert (tmp_path / "reports/report.md").is_file()


def test_dtg_regression_head_starts_at_the_first_batch_mean(tmp_path):
    ds, data, method, model = _dtg(tmp_path, DTGConfig())
    gen = method.generator
    rows = torch.arange(8)
    batch = Batch(data.inputs[rows], data.targets[rows], rows, torch.ones(8, dtype=torch.bool))
    assert float(gen.head.bias.detach()) != pytest.approx(float(batch.y[:, 0].mean()))
    method.batch_losses(model, ds, batch)
    assert float(gen.head.bias.detach()) == pytest.approx(float(batch.y[:, 0].mean())) and bool(gen.head_calibrated)
    later = Batch(data.inputs[rows + 8], data.targets[rows + 8], rows + 8, torch.ones(8, dtype=torch.bool))
    method.batch_losses(model, ds, later)  # once only
    assert float(gen.head.bias.detach()) == pytest.approx(float(batch.y[:, 0].mean()))
