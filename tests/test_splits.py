"""Split files: disjoint, identical across re-runs with the same seed, written by the split stage."""
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.splits import SPLITS, check_disjoint, load_splits, random_splits
from stages import prepare, split


def test_random_splits_are_disjoint_and_cover_everything():
    s = random_splits(500, aux=20, val=50, test=100, seed=3)
    check_disjoint(s)
    assert {k: len(v) for k, v in s.items()} == {"train": 330, "aux": 20, "val": 50, "test": 100}
    assert np.array_equal(np.sort(np.concatenate([s[k] for k in SPLITS])), np.arange(500))


def test_seed_fixes_the_split():
    a, b, c = (random_splits(500, 20, 50, 100, seed) for seed in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in SPLITS)
    assert not np.array_equal(a["train"], c["train"])


def test_overlap_is_refused():
    s = random_splits(100, 5, 5, 5, 0)
    s["aux"] = np.append(s["aux"], s["train"][0])
    with pytest.raises(ValueError, match="both the train and the aux split"):
        check_disjoint(s)


def test_too_large_split_is_refused():
    with pytest.raises(ValueError, match="leaves no training data"):
        random_splits(100, 50, 25, 25, 0)


def test_split_stage_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("params.yaml", "w") as fh:
        yaml.safe_dump({"dataset": "noisy_aux"}, fh)
    runner = CliRunner()
    assert runner.invoke(prepare.main, ["--dataset", "noisy_aux"]).exit_code == 0
    first = runner.invoke(split.main)
    assert first.exit_code == 0, first.output
    a = {k: v.copy() for k, v in load_splits(tmp_path / "data/splits").items()}
    assert runner.invoke(split.main).exit_code == 0
    b = load_splits(tmp_path / "data/splits")
    check_disjoint(b)
    assert all(np.array_equal(a[k], b[k]) for k in SPLITS)
    assert sum(len(v) for v in b.values()) == 1300


def test_split_stage_refuses_tampered_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("dataset: toy2d\n")
    runner = CliRunner()
    assert runner.invoke(prepare.main, ["--dataset", "toy2d"]).exit_code == 0
    with open(tmp_path / "data/prepared/toy2d/data.npz", "ab") as fh:
        fh.write(b"junk")
    result = runner.invoke(split.main)
    assert result.exit_code == 1
    assert "data/prepared/toy2d/data.npz does not match its hash" in result.output
