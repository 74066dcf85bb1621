"""Split files: disjoint, identical across re-runs with the same seed, written by the split stage."""
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.datasets.shared.splits import SPLITS, check_disjoint, load_splits, random_splits
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


# --- hand-edited split files are refused on load, naming the file(s) (issue 15) --------------------------

def _write(folder, splits):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in splits.items():
        np.save(folder / f"{name}.npy", arr)


def _bad(kind, s):
    s = {k: v.copy() for k, v in s.items()}
    if kind == "index_past_the_end":
        s["test"][-1] = 100
    elif kind == "negative_index":
        s["val"][0] = -1
    elif kind == "test_overlaps_train":
        s["test"] = np.append(s["test"], s["train"][:3])
    elif kind == "aux_overlaps_val":
        s["aux"] = np.append(s["aux"], s["val"][0])
    elif kind == "complex_indices":
        s["train"] = s["train"].astype(np.complex128) + 0.5j
    elif kind == "float_indices":
        s["aux"] = s["aux"].astype(np.float64)
    elif kind == "two_dimensional":
        s["val"] = s["val"].reshape(1, -1)
    elif kind == "unlabelled_outside_train":
        s["unlabelled"] = s["test"][:2]
    return s


BAD_SPLITS = {  # case -> what the message must name
    "index_past_the_end": (r"test\.npy: index 100 is out of range", "[0, 100)"),
    "negative_index": (r"val\.npy: index -1 is out of range", ""),
    "test_overlaps_train": (r"train\.npy and .*test\.npy share 3 sample", "disjoint"),
    "aux_overlaps_val": (r"aux\.npy and .*val\.npy share 1 sample", "disjoint"),
    "complex_indices": (r"train\.npy has dtype complex128", "integers"),
    "float_indices": (r"aux\.npy has dtype float64", "integers"),
    "two_dimensional": (r"val\.npy has shape \(1, 5\)", "1-D"),
    "unlabelled_outside_train": (r"unlabelled\.npy lists samples outside .*train\.npy", "subset"),
}


@pytest.mark.parametrize("kind", sorted(BAD_SPLITS))
def test_load_splits_refuses_hand_edited_files_naming_them(tmp_path, kind):
    folder = tmp_path / "splits"
    _write(folder, _bad(kind, random_splits(100, 5, 5, 10, 0)))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    pattern, also = BAD_SPLITS[kind]
    with pytest.raises(ValueError, match=pattern) as err:
        load_splits(folder, num_samples=100)
    assert also in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing rewritten


def test_truncated_split_file_is_named(tmp_path):
    folder = tmp_path / "splits"
    _write(folder, random_splits(100, 5, 5, 10, 0))
    data = (folder / "val.npy").read_bytes()
    (folder / "val.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"val\.npy is not a readable \.npy file"):
        load_splits(folder, num_samples=100)


def test_good_splits_load_with_a_size_check(tmp_path):
    s = random_splits(100, 5, 5, 10, 0)
    s["unlabelled"] = s["train"][:4]
    _write(tmp_path, s)
    loaded = load_splits(tmp_path, num_samples=100)
    assert all(np.array_equal(loaded[k], s[k]) and loaded[k].dtype == np.int64 for k in s)
