"""stages/dataset_code.py: which other datasets' code each dataset runs, found by parsing its package's imports."""
import inspect
import json
from pathlib import Path

import pytest

from pipeline.core.registry import DATASETS
from stages.dataset_code import DATASETS_ROOT, built_from, dataset_code, package_hash


def referenced_dataset_packages(cls: type) -> set[str]:
    """The dataset packages a registered class runs code of, read from the live classes (not from the source):
    its bases' modules and the modules of the classes it holds (a pair's members, their configs)."""
    held = [v for base in cls.__mro__ for v in vars(base).values() if inspect.isclass(v)]
    modules = [c.__module__ for c in (*cls.__mro__, *held)]
    return {m.split(".")[2] for m in modules if m.startswith("pipeline.datasets.") and m.count(".") >= 2}


@pytest.mark.parametrize("name", DATASETS.names())
def test_the_parsed_imports_cover_every_dataset_package_the_registered_class_runs(name):
    found = set(built_from(name))
    assert referenced_dataset_packages(DATASETS.get(name)) - {"shared", name} <= found
    assert name not in found and "shared" not in found


def test_a_pair_names_its_members_and_a_single_dataset_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the code is found from the package, not from the working directory
    assert built_from("pet_cub") == ["cub", "oxford_pet"]
    assert built_from("cifar10_cifar100") == ["cifar10", "cifar100"]
    assert dataset_code("cub") == {"dataset": "cub", "built_from": {}}
    code = dataset_code("pet_cub")
    assert code["built_from"]["pipeline/datasets/cub"] == package_hash(DATASETS_ROOT / "cub")
    json.dumps(code)


def write_package(root: Path, name: str, source: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(source)


def test_every_import_form_is_followed_transitively_and_a_member_edit_changes_only_its_hash(tmp_path):
    root = tmp_path / "pipeline/datasets"
    write_package(root, "shared", "")
    write_package(root, "pair", "from pipeline.datasets.first.task import A\nfrom .. import second\n")
    (root / "first").mkdir()
    (root / "first/__init__.py").write_text("")
    (root / "first/task.py").write_text("import pipeline.datasets.shared.base\nfrom ...datasets import third\n")
    write_package(root, "second", "from pipeline.datasets import shared\n")
    write_package(root, "third", "")
    write_package(root, "alone", "import numpy\nfrom pipeline.core import io\n")
    assert built_from("pair", root) == ["first", "second", "third"]  # third through first
    assert built_from("alone", root) == []
    before = dataset_code("pair", root)["built_from"]
    (root / "third/__init__.py").write_text("# an edit\n")
    after = dataset_code("pair", root)["built_from"]
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"pipeline/datasets/third"}
    (root / "first/__pycache__").mkdir()
    (root / "first/__pycache__/task.cpython-311.pyc").write_bytes(b"\0")
    assert dataset_code("pair", root)["built_from"] == after  # byte-code caches are not code


def test_a_missing_dataset_package_is_named(tmp_path):
    root = tmp_path / "pipeline/datasets"
    write_package(root, "pair", "from pipeline.datasets.gone.task import A\n")
    with pytest.raises(FileNotFoundError, match=r"pair/__init__.py imports the dataset package 'gone'"):
        built_from("pair", root)
    with pytest.raises(FileNotFoundError, match=r"dataset 'nope' has no package .*datasets/nope"):
        built_from("nope", root)
