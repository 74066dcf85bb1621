"""MNIST and STL-10 (MAXL Table 1): the real-format loaders on tiny hand-written files (IDX gzipped and plain; the
STL-10 binary with a pixel pattern that tells rows from columns), one clear error per missing or malformed file,
the stand-ins through the real loaders (byte-stable), the prepared shapes through the default networks, and MAXL
training a few steps on each."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.datasets.mnist.sources import read_mnist
from pipeline.datasets.mnist.task import Mnist
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.image_classification import STANDIN_DIR
from pipeline.datasets.stl10.sources import STL10_CLASSES, read_stl10
from pipeline.datasets.stl10.task import Stl10
from pipeline.engine.training import train_run
from pipeline.models.classifiers import MnistNet

TINY_MNIST = {"standin_train_per_class": 6, "standin_test_per_class": 2, "standin_subclasses": 3}
TINY_STL = {"standin_num_classes": 3, "standin_train_per_class": 6, "standin_test_per_class": 2,
            "standin_subclasses": 2}
TINY_SPLIT = {"train_fraction": 0.6, "aux_fraction": 0.2, "val": 4}

# ---------------------------------------------------------------------------------------------- MNIST (IDX)


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand: big-endian magic, one big-endian int32 per dimension, the bytes."""
    return struct.pack(">i", magic) + struct.pack(f">{len(dims)}i", *dims) + payload


def mnist_image(i: int) -> np.ndarray:
    """uint8 [28, 28]: 10·i everywhere, 255 at (row 0, column 3) and 254 at (row 5, column 0): the loaded image
    tells which image it is and that rows come first."""
    img = np.full((28, 28), 10 * i, dtype=np.uint8)
    img[0, 3], img[5, 0] = 255, 254
    return img


def write_tiny_mnist(root: Path, gz: dict[str, bool]) -> dict[str, list[int]]:
    """3 training and 2 test digits; ``gz[split]`` gzips that split's two files."""
    root.mkdir(parents=True, exist_ok=True)
    labels = {"train": [7, 0, 9], "t10k": [3, 3]}
    first = {"train": 0, "t10k": 3}
    for split, ys in labels.items():
        pixels = b"".join(mnist_image(first[split] + k).tobytes() for k in range(len(ys)))
        files = {f"{split}-images-idx3-ubyte": idx_bytes(2051, (len(ys), 28, 28), pixels),
                 f"{split}-labels-idx1-ubyte": idx_bytes(2049, (len(ys),), bytes(ys))}
        for name, data in files.items():
            if gz[split]:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return labels


@pytest.mark.parametrize("gz", [{"train": True, "t10k": True}, {"train": False, "t10k": False},
                                {"train": True, "t10k": False}])
def test_mnist_reads_gzipped_and_plain_idx(tmp_path, gz):
    labels = write_tiny_mnist(tmp_path, gz)
    raw = read_mnist(tmp_path)
    assert raw.images.shape == (5, 1, 28, 28) and raw.images.dtype == np.uint8
    for k, img in enumerate(raw.images):
        assert np.array_equal(img[0], mnist_image(k))
    assert raw.labels["class"].tolist() == labels["train"] + labels["t10k"]
    assert raw.is_train.tolist() == [True] * 3 + [False] * 2
    assert raw.names["class"] == [str(d) for d in range(10)] and raw.subclass_labels is None


def _rewrite(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "t10k-labels-idx1-ubyte").unlink(),
     r"t10k-labels-idx1-ubyte is missing \(expected t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz"),
    (lambda r: _rewrite(r / "train-images-idx3-ubyte.gz", idx_bytes(2049, (3, 28, 28), bytes(3 * 784))),
     r"train-images-idx3-ubyte\.gz: IDX magic number 2049 \(0x00000801\), expected 2051 \(0x00000803\) for MNIST "
     r"images"),
    (lambda r: _rewrite(r / "t10k-labels-idx1-ubyte", idx_bytes(2051, (2,), bytes([3, 3])),),
     r"t10k-labels-idx1-ubyte: IDX magic number 2051 .* expected 2049"),
    (lambda r: _rewrite(r / "train-images-idx3-ubyte.gz", idx_bytes(2051, (4, 28, 28), bytes(3 * 784))),
     r"train-images-idx3-ubyte\.gz: the header says images of shape \(4, 28, 28\), i\.e\. 3152 bytes, the file "
     r"has 2368"),
    (lambda r: _rewrite(r / "train-images-idx3-ubyte.gz", struct.pack(">i", 2051) + b"\x00\x00"),
     r"train-images-idx3-ubyte\.gz: header cut short"),
    (lambda r: (r / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip"),
     r"train-labels-idx1-ubyte\.gz: not a readable gzip file"),
    (lambda r: _rewrite(r / "train-labels-idx1-ubyte.gz", idx_bytes(2049, (2,), bytes([1, 2]))),
     r"train-labels-idx1-ubyte\.gz: 2 labels for the 3 images of train-images-idx3-ubyte\.gz"),
    (lambda r: _rewrite(r / "t10k-labels-idx1-ubyte", idx_bytes(2049, (2,), bytes([3, 11]))),
     r"t10k-labels-idx1-ubyte: labels must be digits 0\.\.9, got up to 11"),
    (lambda r: _rewrite(r / "t10k-images-idx3-ubyte", idx_bytes(2051, (2, 28, 14), bytes(2 * 392))),
     r"t10k-images-idx3-ubyte: images must be square, got 28 x 14"),
])
def test_mnist_names_the_bad_file(tmp_path, damage, message):
    write_tiny_mnist(tmp_path, {"train": True, "t10k": False})
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        read_mnist(tmp_path)


def test_mnist_prepare_from_path_names_the_missing_folder_content(tmp_path):
    (tmp_path / "README.md").write_text("placeholder")
    params = parse_params({"dataset": "mnist", "method": "stl",
                           "datasets": {"mnist": {"prepare": {"source": "path", "root": str(tmp_path)}}}})
    with pytest.raises(DataError, match=r"holds no data yet .* train-images-idx3-ubyte"):
        Mnist(params.profile.model).prepare(params.dataset_config, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- STL-10 (binary)


def stl_image(k: int) -> np.ndarray:
    """uint8 [3, 96, 96] (planes, row, column): red = the row, green = the column, blue = 100 + k."""
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    return np.stack([rows, cols, np.full((96, 96), 100 + k)]).astype(np.uint8)


def stl_bytes(images: list[np.ndarray]) -> bytes:
    """The release's layout written by hand: per image, per plane, column after column (Fortran order)."""
    return b"".join(plane.tobytes(order="F") for img in images for plane in img)


def write_tiny_stl(root: Path, names: bool = True) -> dict[str, list[int]]:
    root.mkdir(parents=True, exist_ok=True)
    labels = {"train": [1, 10, 4], "test": [2, 2]}
    first = {"train": 0, "test": 3}
    for split, ys in labels.items():
        (root / f"{split}_X.bin").write_bytes(stl_bytes([stl_image(first[split] + k) for k in range(len(ys))]))
        (root / f"{split}_y.bin").write_bytes(bytes(ys))
    if names:
        (root / "class_names.txt").write_text("".join(f"{n}\n" for n in STL10_CLASSES))
    return labels


def test_stl10_reads_the_column_major_planes(tmp_path):
    labels = write_tiny_stl(tmp_path)
    raw = read_stl10(tmp_path)
    assert raw.images.shape == (5, 3, 96, 96) and raw.images.dtype == np.uint8
    for k, img in enumerate(raw.images):  # red grows down the rows, green across the columns
        assert np.array_equal(img, stl_image(k))
    assert raw.images[0, 0, 5, 0] == 5 and raw.images[0, 1, 0, 5] == 5
    assert raw.labels["class"].tolist() == [y - 1 for y in labels["train"] + labels["test"]]
    assert raw.is_train.tolist() == [True] * 3 + [False] * 2
    assert raw.names["class"] == list(STL10_CLASSES) and raw.subclass_labels is None


def test_stl10_without_class_names_uses_the_release_names(tmp_path):
    write_tiny_stl(tmp_path, names=False)
    assert read_stl10(tmp_path).names["class"] == list(STL10_CLASSES)
    (tmp_path / "class_names.txt").write_text("a\nb\n")  # fewer names than labels
    with pytest.raises(DataError, match=r"train_y\.bin: labels must lie in 1\.\.2 \(one per class name\), got 1\.\.10"):
        read_stl10(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "test_y.bin").unlink(), r"test_y\.bin is missing \(the folder must hold train_X\.bin"),
    (lambda r: (r / "train_X.bin").write_bytes(bytes(27648 * 3 + 5)),
     r"train_X\.bin: 82949 bytes is not a whole number of 3 x 96 x 96 images \(27648 bytes each\)"),
    (lambda r: (r / "test_y.bin").write_bytes(bytes([2, 2, 2])), r"test_y\.bin: 3 labels for the 2 images of test_X"),
    (lambda r: (r / "test_y.bin").write_bytes(bytes([0, 2])), r"test_y\.bin: labels must lie in 1\.\.10"),
])
def test_stl10_names_the_bad_file(tmp_path, damage, message):
    write_tiny_stl(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        read_stl10(tmp_path)


# ---------------------------------------------------------------------------------------------- stand-ins


@pytest.mark.parametrize("cls, prepare, shape", [(Mnist, TINY_MNIST, (1, 28, 28)), (Stl10, TINY_STL, (3, 96, 96))])
def test_standin_round_trip_through_the_real_loader(cls, prepare, shape, tmp_path):
    name = cls.name
    params = parse_params({"dataset": name, "method": "maxl", "datasets": {name: {"prepare": prepare}}})
    ds = cls(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path / "a")
    raw_dir = tmp_path / "a" / STANDIN_DIR
    raw = cls.raw_format.read(raw_dir)
    data = ds.load(tmp_path / "a")
    n_train, n_test = prepare["standin_train_per_class"], prepare["standin_test_per_class"]
    k = prepare.get("standin_num_classes", 10)
    assert data.inputs.shape == (k * (n_train + n_test),) + shape and data.inputs.dtype == torch.uint8
    assert torch.equal(data.inputs, torch.from_numpy(raw.images))  # prepared = what the real reader reads
    assert data.targets[:, 0].long().tolist() == raw.labels["class"].tolist()
    assert np.bincount(raw.labels["class"][raw.is_train]).tolist() == [n_train] * k
    assert data.meta["channels"] == shape[0] and data.meta["image_size"] == shape[1]
    assert len(data.meta["mean"]) == shape[0] and data.meta["num_subclasses"] == prepare["standin_subclasses"]
    # every sub-class appears in every class (the hierarchy a generated task can find)
    pairs = {(int(c), int(s)) for c, s in zip(raw.labels["class"], data.meta["subclass_labels"])}
    assert len(pairs) == k * prepare["standin_subclasses"]
    if cls is Mnist:  # the gzipped IDX files, with the images' magic number
        assert gzip.decompress((raw_dir / "train-images-idx3-ubyte.gz").read_bytes())[:4] == bytes([0, 0, 8, 3])
        assert data.meta["num_classes"] == 10 == params.dataset_config.known_label_groups()
    else:
        assert (raw_dir / "train_X.bin").stat().st_size == k * n_train * 27648
        assert data.meta["num_classes"] == k == params.dataset_config.known_label_groups()
    ds.prepare(params.dataset_config, tmp_path / "b")  # seeded: the same files, byte for byte
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        assert path.read_bytes() == (tmp_path / "b" / STANDIN_DIR / path.relative_to(raw_dir)).read_bytes()


def test_mnist_standin_digits_differ_by_class_and_style():
    """The digits are told apart by their shape, and a writing style by its ink (thickness): the mean image of
    two digits differs more than noise, and the thickest style inks more pixels than the thinnest."""
    from pipeline.datasets.mnist.standin import STYLES, digit_styles, generate_digits

    raw = generate_digits(10, 18, 36, 1, 0.0, seed=3)
    img, cls, sub = raw.images[:, 0].astype(float), raw.labels["class"], raw.subclass_labels
    means = np.stack([img[(cls == c) & raw.is_train].mean(0) for c in range(10)])
    assert np.abs(means[1] - means[0]).mean() > 10
    styles = digit_styles(10, 18, np.random.default_rng(3))
    thickness = np.array([STYLES[styles[c, s]][0] for c, s in zip(cls, sub)])
    ink = (img > 128).sum((1, 2))
    thickest, thinnest = max(t for t, *_ in STYLES), min(t for t, *_ in STYLES)
    assert ink[thickness == thickest].mean() > 1.5 * ink[thickness == thinnest].mean()


# ---------------------------------------------------------------------------------------------- networks, training


def test_mnist_net_is_two_conv_layers_on_grayscale():
    net = MnistNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 64 * 7 * 7) == (2, net.out_features)


@pytest.mark.parametrize("cls, prepare", [(Mnist, TINY_MNIST), (Stl10, TINY_STL)])
def test_maxl_trains_on_the_standin_from_the_defaults(cls, prepare, tmp_path):
    """The defaults' network on the prepared images: batch_transform's crops keep the size, main and auxiliary
    logits come out, and MAXL (ψ = 2) trains a few steps with finite validation losses."""
    name = cls.name
    params = parse_params({
        "dataset": name, "method": "maxl", "seeds": [0],
        "datasets": {name: {"prepare": prepare, "split": TINY_SPLIT,
                            "train": {"steps": 2, "batch_size": 4, "eval_every": 1, "log_every": 1}}},
        "methods": {"labels": {"psi": 2}}})
    ds = cls(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    splits = ds.make_splits(data, params.split)
    c, s = data.inputs.shape[1:3]
    x, _ = ds.batch_transform(data.inputs[:4], data.targets[:4], train=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, c, s, s) and x.dtype == torch.float32
    groups = ds.label_groups(data)
    net = ds.build_model(data, params.profile.model, aux_outputs=2 * groups)
    main, aux = net.decode(net.encode(x))
    assert main.shape == (4, groups) and aux.shape == (4, 2 * groups)
    assert ds.build_label_generator(data, params.profile.model, 2 * groups)(x).shape == (4, 2 * groups)
    result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    assert np.isfinite(result.history["val_main_loss"]).all()


@pytest.mark.parametrize("name", ["mnist", "stl10"])
@pytest.mark.parametrize("method", ["stl", "maxl", "random", "auxilearn_labels"])
def test_validation_accepts_the_defaults(name, method):
    params = parse_params({"dataset": name, "method": method})
    assert params.profile.model.backbone == ("mnist_net" if name == "mnist" else "vgg16")
    assert params.dataset_config.known_label_groups() == 10


def test_usefulness_stage_completes_without_given_auxiliaries(tmp_path, monkeypatch):
    """The pipeline's last stage on a generated-labels dataset: nothing to score, said in its outputs, exit 0 (so
    `dvc exp run -S dataset=mnist -S method=maxl` completes)."""
    import json

    import yaml
    from click.testing import CliRunner

    from stages import prepare, split, usefulness

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"dataset": "mnist", "method": "maxl", "seeds": [0],
         "datasets": {"mnist": {"prepare": TINY_MNIST, "split": TINY_SPLIT}}}))
    runner = CliRunner()
    for cmd, args in ((prepare.main, ["--dataset", "mnist"]), (split.main, []), (usefulness.main, [])):
        result = runner.invoke(cmd, args)
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "reports/usefulness.json").read_text()) == {
        "dataset": "mnist", "applicable": False, "num_aux": 0}
    assert "mnist has no given auxiliary tasks" in (tmp_path / "reports/usefulness.md").read_text()
    assert (tmp_path / "reports/usefulness.png").read_bytes()[:4] == b"\x89PNG"
