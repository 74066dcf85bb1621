"""Bad params.yaml: one message naming the key, before any work, nothing written."""
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.config import ParamsError, load_params, parse_params
from stages import evaluate, prepare, report, split, train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "raw, key, text",
    [
        ({"metod": "stl"}, "metod", "unknown key"),
        ({"datasets": {"toy2d": {"train": {"lr": "fast"}}}}, "datasets.toy2d.train.lr", "valid number"),
        ({"datasets": {"toy2d": {"train": {"stepz": 3}}}}, "datasets.toy2d.train.stepz", "unknown key"),
        ({"method": "magic"}, "method", "unknown method 'magic'"),
        ({"dataset": "mnist"}, "dataset", "unknown dataset 'mnist'"),
        ({"seeds": []}, "seeds", "at least 1"),
        ({"datasets": {"toy2d": {"split": {"test": 1250}}}}, "datasets.toy2d.split", "leaves no training data"),
    ],
)
def test_bad_params_name_the_key(raw, key, text):
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    msg = str(err.value)
    assert f"{key}" in msg and text in msg, msg
    assert msg.startswith("params.yaml: invalid parameters")


def test_repository_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.method == "auxilearn_linear" and params.dataset == "toy2d"


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(bad)


@pytest.mark.parametrize("command, args", [(prepare.main, ["--dataset", "toy2d"]), (split.main, []),
                                            (train.main, []), (evaluate.main, []), (report.main, [])])
def test_every_stage_stops_before_touching_outputs(tmp_path, monkeypatch, command, args):
    monkeypatch.chdir(tmp_path)
    sentinels = {Path("data/prepared/toy2d/data.npz"): b"old data", Path("data/splits/train.npy"): b"old split",
                 Path("models/seed_0/model.pt"): b"old model", Path("reports/metrics.json"): b"{}"}
    for path, content in sentinels.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    Path("params.yaml").write_text(yaml.safe_dump({"method": "magic", "datasets": {"toy2d": {"train": {"lr": -1}}}}))
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 1
    assert "method: unknown method 'magic'" in result.output
    assert "datasets.toy2d.train.lr: Input should be greater than 0" in result.output
    assert "Traceback" not in result.output
    for path, content in sentinels.items():
        assert path.read_bytes() == content
    assert sorted(p.name for p in Path("models").iterdir()) == ["seed_0"]
