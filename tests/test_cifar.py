"""CIFAR-10, CIFAR-100 and SVHN: the real-format loaders on tiny hand-written files (pixels, labels, channel
order), the restricted unpickler, file errors, the low-data splits, the deterministic stand-in with its hidden
sub-classes, the classifiers and label generators, the batch transform and the metrics."""
from __future__ import annotations

import builtins
import os
import pickle
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

import pipeline.datasets.shared.image_classification as image_classification
import pipeline.datasets.shared.standin_shapes as standin_shapes
from pipeline.datasets.shared.base import DataError, TaskData
from pipeline.datasets.cifar10.task import Cifar10
from pipeline.datasets.cifar100.task import Cifar100
from pipeline.datasets.shared.cifar_pickle import load_pickle
from pipeline.datasets.shared.image_classification import STANDIN_DIR
from pipeline.datasets.shared.image_prepared import H5_NAME
from pipeline.datasets.svhn.task import Svhn
from pipeline.core.io import write_manifest
from pipeline.core.registry import MODELS
from pipeline.datasets.shared.splits import check_disjoint
from tests.conftest import FixedLogits

# ---------------------------------------------------------------------------------------------- fixtures


def marked_image(i: int) -> np.ndarray:
    """uint8 [3, 32, 32]: channel c holds 40·c + i everywhere except red (row 0, col 1) = 255 and green
    (row 2, col 0) = 254, so the loaded tensor tells the image, the channel order and row-major layout."""
    img = np.empty((3, 32, 32), dtype=np.uint8)
    for c in range(3):
        img[c] = 40 * c + i
    img[0, 0, 1] = 255
    img[1, 2, 0] = 254
    return img


def cifar_rows(images: list[np.ndarray]) -> np.ndarray:
    """CIFAR's ``data`` rows: the red plane's 1024 values, then green, then blue, each row-major (written by
    hand here, independently of the loader's reshape)."""
    return np.stack([np.concatenate([img[c].ravel() for c in range(3)]) for img in images]).astype(np.uint8)


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the real CIFAR files: every string as a str opcode
    (SHORT_BINSTRING / BINSTRING, read back as bytes; no ``_codecs.encode`` call) and numpy's
    reconstructor under its old name ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(data)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
                   + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dump(path: Path, obj, py2: bool = False) -> None:
    with open(path, "wb") as fh:
        (Py2Pickler(fh, protocol=2) if py2 else pickle.Pickler(fh, protocol=2)).dump(obj)


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_tiny_cifar10(root: Path, py2: bool = False) -> SimpleNamespace:
    """5 training batches of 2 images and a test batch of 3, in CIFAR-10's python-version layout."""
    root.mkdir(parents=True)
    labels = [3, 0, 9, 1, 4, 4, 7, 2, 8, 5, 6, 0, 9]
    images = [marked_image(i) for i in range(len(labels))]
    for b in range(5):
        rows = [2 * b, 2 * b + 1]
        dump(root / f"data_batch_{b + 1}", {b"batch_label": f"training batch {b + 1} of 5".encode(),
                                            b"labels": [labels[r] for r in rows],
                                            b"data": cifar_rows([images[r] for r in rows]),
                                            b"filenames": [f"img_{r}.png".encode() for r in rows]}, py2)
    dump(root / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": labels[10:],
                               b"data": cifar_rows(images[10:]), b"filenames": [b"t0.png", b"t1.png", b"t2.png"]}, py2)
    dump(root / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 2, b"num_vis": 3072}, py2)
    return SimpleNamespace(root=root, labels=np.array(labels), images=np.stack(images),
                           is_train=np.arange(len(labels)) < 10)


def write_tiny_cifar100(root: Path) -> SimpleNamespace:
    root.mkdir(parents=True)
    fine, coarse = [5, 99, 17, 0, 42, 63], [2, 19, 7, 0, 11, 14]
    images = [marked_image(10 + i) for i in range(6)]
    fine_names = [f"fine_{k}".encode() for k in range(100)]
    coarse_names = [f"coarse_{k}".encode() for k in range(20)]
    for fname, rows in (("train", [0, 1, 2, 3]), ("test", [4, 5])):
        dump(root / fname, {b"filenames": [b"x.png"] * len(rows), b"batch_label": fname.encode(),
                            b"fine_labels": [fine[r] for r in rows], b"coarse_labels": [coarse[r] for r in rows],
                            b"data": cifar_rows([images[r] for r in rows])})
    dump(root / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names})
    return SimpleNamespace(root=root, fine=np.array(fine), coarse=np.array(coarse), images=np.stack(images))


def write_tiny_svhn(root: Path) -> SimpleNamespace:
    """train_32x32.mat (4 images) and test_32x32.mat (2): X (32, 32, 3, N) uint8, y (N, 1) with 10 for 0."""
    root.mkdir(parents=True)
    digits = np.array([0, 7, 3, 9, 0, 1])
    images = np.stack([marked_image(20 + i) for i in range(6)])  # [N, 3, 32, 32]
    for fname, rows in (("train_32x32.mat", slice(0, 4)), ("test_32x32.mat", slice(4, 6))):
        x = np.stack([img.transpose(1, 2, 0) for img in images[rows]], axis=3)  # X[row, col, channel, i]
        y = np.where(digits[rows] == 0, 10, digits[rows]).astype(np.uint8)[:, None]
        scipy.io.savemat(root / fname, {"X": x, "y": y})
    return SimpleNamespace(root=root, digits=digits, images=images)


def prepare_load(ds, out: Path, **cfg):
    out.mkdir(parents=True, exist_ok=True)
    ds.prepare(ds.Config(**cfg), out)
    return ds.load(out)


def assert_marked(data: TaskData, images: np.ndarray) -> None:
    assert data.inputs.shape == (len(images), 3, 32, 32) and data.inputs.dtype == torch.uint8
    assert np.array_equal(data.inputs.numpy(), images)
    assert int(data.inputs[0, 0, 0, 1]) == 255 and int(data.inputs[0, 1, 2, 0]) == 254  # planes, rows, cols
    assert int(data.inputs[0, 0, 1, 0]) != 255


# ---------------------------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("py2", [False, True], ids=["py3-protocol2", "py2-cpickle"])
def test_cifar10_loader(tmp_path, py2):
    tiny = write_tiny_cifar10(tmp_path / "cifar-10-batches-py", py2)
    data = prepare_load(Cifar10(), tmp_path / "out", source="path", root=str(tiny.root))
    assert_marked(data, tiny.images)
    assert data.targets.shape == (13, 1) and data.targets.dtype == torch.float32
    assert np.array_equal(data.targets[:, 0].numpy(), tiny.labels) and data.task_names == ["class"]
    assert np.array_equal(data.meta["is_train"], tiny.is_train)
    assert data.meta["class_names"][3] == "cat" and data.meta["num_classes"] == 10
    assert data.meta["source"] == "CIFAR-10" and "subclass_labels" not in data.meta
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [H5_NAME]
    train_px = torch.as_tensor(tiny.images[:10]).double() / 255  # statistics of the official train images only
    assert np.allclose(data.meta["mean"], train_px.mean(dim=(0, 2, 3)).numpy())
    assert np.allclose(data.meta["std"], train_px.std(dim=(0, 2, 3), unbiased=False).numpy())


@pytest.mark.parametrize("main", ["fine", "coarse"])
def test_cifar100_loader_fine_and_coarse(tmp_path, main):
    tiny = write_tiny_cifar100(tmp_path / "cifar-100-python")
    data = prepare_load(Cifar100(), tmp_path / "out", source="path", root=str(tiny.root), primary_level=main)
    assert_marked(data, tiny.images)
    expected = tiny.fine if main == "fine" else tiny.coarse
    assert np.array_equal(data.targets[:, 0].numpy(), expected)
    assert data.meta["num_classes"] == (100 if main == "fine" else 20) and data.meta["main_label"] == main
    assert data.meta["class_names"][expected[1]] == f"{main}_{expected[1]}"
    assert np.array_equal(data.meta["coarse_labels"], tiny.coarse)  # both labellings kept
    assert np.array_equal(data.meta["fine_labels"], tiny.fine)
    assert data.meta["coarse_names"][19] == "coarse_19"
    assert data.meta["is_train"].tolist() == [True] * 4 + [False] * 2


def test_svhn_loader_maps_10_to_0(tmp_path):
    tiny = write_tiny_svhn(tmp_path / "svhn")
    data = prepare_load(Svhn(), tmp_path / "out", source="path", root=str(tiny.root))
    assert_marked(data, tiny.images)
    assert np.array_equal(data.targets[:, 0].numpy(), tiny.digits)
    assert data.meta["class_names"] == [str(d) for d in range(10)] and data.meta["num_classes"] == 10
    assert data.meta["is_train"].tolist() == [True] * 4 + [False] * 2


# ---------------------------------------------------------------------------------------------- safety, errors


class CallsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("payload, global_name", [(CallsSystem, r"(posix|os)\.system"),
                                                  (CallsEval, r"(builtins|__builtin__)\.eval")])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, payload, global_name):
    tiny = write_tiny_cifar10(tmp_path / "c10")
    marker = tmp_path / "pwned"
    bad = tiny.root / "data_batch_2"
    dump(bad, {b"labels": [0, 1], b"data": payload(marker)})
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*refusing to load the global " + global_name):
        prepare_load(Cifar10(), tmp_path / "out", source="path", root=str(tiny.root))
    assert not marker.exists()
    with pytest.raises(DataError, match="refusing"):
        load_pickle(bad)
    assert not marker.exists()


def test_pickle_of_an_object_array_is_refused(tmp_path):
    path = tmp_path / "objects"
    dump(path, {b"data": np.array([1, "x"], dtype=object)})
    with pytest.raises(DataError, match=f"{re.escape(str(path))}.*not a plain numeric dtype"):
        load_pickle(path)


@pytest.mark.parametrize("damage, text", [
    ("missing", "data_batch_3 is missing"),
    ("truncated", "data_batch_3 is not a readable CIFAR pickle"),
    ("garbage", "data_batch_3 is not a readable CIFAR pickle"),
    ("no_labels", "data_batch_3: key 'labels' is missing"),
    ("bad_shape", r"data_batch_3: data should be uint8 \[n, 3072\]"),
    ("bad_label", r"labels must lie in \[0, 10\)"),
])
def test_bad_cifar_file_is_named(tmp_path, damage, text):
    tiny = write_tiny_cifar10(tmp_path / "c10")
    path = tiny.root / "data_batch_3"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif damage == "no_labels":
        dump(path, {b"data": cifar_rows([marked_image(0)])})
    elif damage == "bad_shape":
        dump(path, {b"labels": [0], b"data": np.zeros((1, 1024), np.uint8)})
    else:
        dump(path, {b"labels": [10, 0], b"data": cifar_rows([marked_image(0), marked_image(1)])})
    with pytest.raises(DataError, match=text):
        prepare_load(Cifar10(), tmp_path / "out", source="path", root=str(tiny.root))


@pytest.mark.parametrize("damage, text", [
    ("missing", "test_32x32.mat is missing"),
    ("garbage", "test_32x32.mat is not a readable MATLAB file"),
    ("no_y", "test_32x32.mat: expected variables X and y"),
    ("label_0", r"test_32x32.mat: labels must lie in 1..10"),
])
def test_bad_svhn_file_is_named(tmp_path, damage, text):
    tiny = write_tiny_svhn(tmp_path / "svhn")
    path = tiny.root / "test_32x32.mat"
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"MATLAB? no" * 20)
    elif damage == "no_y":
        scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 1), np.uint8)})
    else:
        scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.zeros((1, 1), np.uint8)})
    with pytest.raises(DataError, match=text):
        prepare_load(Svhn(), tmp_path / "out", source="path", root=str(tiny.root))


def test_bad_prepared_file_is_named(tmp_path):
    ds = Cifar10()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / H5_NAME)) + " is missing"):
        ds.load(tmp_path)
    tiny = write_tiny_cifar10(tmp_path / "c10")
    prepare_load(ds, tmp_path / "out", source="path", root=str(tiny.root))
    with h5py.File(tmp_path / "out" / H5_NAME, "a") as f:
        del f["labels"]
        f["labels"] = np.zeros(3, dtype=np.int64)
    with pytest.raises(DataError, match="images.h5: labels"):
        ds.load(tmp_path / "out")
    (tmp_path / "out" / H5_NAME).write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        ds.load(tmp_path / "out")


@pytest.mark.parametrize("cls", [Cifar10, Cifar100, Svhn])
def test_raw_folder_without_data_is_named(tmp_path, cls):
    """source=path with a root that is not a folder, or still holds only the placeholder README: a DataError
    naming the key, at prepare time."""
    placeholder = tmp_path / "raw"
    placeholder.mkdir()
    (placeholder / "README.md").write_text("put the files here")
    key = re.escape(f"datasets.{cls.name}.prepare.root")
    with pytest.raises(DataError, match=f"{re.escape(str(placeholder))} holds no data yet .*source is 'path'"):
        prepare_load(cls(), tmp_path / "out", source="path", root=str(placeholder))
    with pytest.raises(DataError, match=f"{key} = .*not a folder"):
        prepare_load(cls(), tmp_path / "out", source="path", root=str(tmp_path / "absent"))


def test_configs_are_checked():
    with pytest.raises(ValueError, match="root is required"):
        Cifar10.Config(source="path", root=None)
    with pytest.raises(ValueError, match="root is required"):
        Svhn.Config(source="path", root=None)
    assert (Cifar10.Config().root, Cifar100.Config().root, Svhn.Config().root) == (
        "data/raw/cifar10", "data/raw/cifar100", "data/raw/svhn")
    with pytest.raises(ValueError, match="resnet18 has no width"):
        Cifar10.ModelConfig(backbone="resnet18", width=0.5)
    with pytest.raises(ValueError):
        Cifar10.Config(primary_level="coarse")  # only CIFAR-100 has a hierarchy
    assert Cifar10.ModelConfig().backbone == "vgg16" and Svhn.ModelConfig().backbone == "convnet4"
    assert Cifar10.ModelConfig().resolved_width == 0.125 and Cifar10.ModelConfig(width=1).resolved_width == 1


# ---------------------------------------------------------------------------------------------- splits


def fake_data(n_train: int = 400, n_test: int = 60) -> TaskData:
    is_train = np.r_[np.ones(n_train, bool), np.zeros(n_test, bool)]
    rng = np.random.default_rng(0)
    is_train = is_train[rng.permutation(len(is_train))]  # official rows interleaved
    targets = torch.from_numpy(rng.integers(0, 10, len(is_train)).astype(np.float32))[:, None]
    return TaskData(torch.zeros(len(is_train), 3, 32, 32, dtype=torch.uint8), targets, ["class"],
                    {"num_classes": 10, "is_train": is_train, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})


def test_low_data_splits():
    data = fake_data()
    is_train = data.meta["is_train"]
    cfg = Cifar10.SplitConfig(seed=3, train_fraction=0.1, aux_fraction=0.1, val=50, max_test=0)
    s = Cifar10().make_splits(data, cfg)
    check_disjoint(s)
    assert {k: len(v) for k, v in s.items()} == {"train": 36, "aux": 4, "val": 50, "test": 60}
    assert all(is_train[s[k]].all() for k in ("train", "aux", "val"))
    assert np.array_equal(s["test"], np.flatnonzero(~is_train))
    again = Cifar10().make_splits(data, cfg)
    other = Cifar10().make_splits(data, cfg.model_copy(update={"seed": 4}))
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["train"], other["train"])
    # the paper's defaults: 5 % of the official training split, 2.5 % of it (at least one image) for aux
    d = Cifar10().make_splits(data, Cifar10.SplitConfig(**{**Cifar10.default_split, "val": 20}))
    assert (len(d["train"]), len(d["aux"])) == (19, 1)
    capped = Cifar10().make_splits(data, cfg.model_copy(update={"max_test": 7}))
    assert len(capped["test"]) == 7 and (~is_train[capped["test"]]).all()
    with pytest.raises(ValueError, match="val = 500 exceeds the 360 official training images outside"):
        Cifar10().make_splits(data, cfg.model_copy(update={"val": 500}))


# ---------------------------------------------------------------------------------------------- stand-in

TINY_STANDIN = {"standin_num_classes": 3, "standin_subclasses": 2, "standin_train_per_class": 6,
                "standin_test_per_class": 4}
RAW_FILES = {Cifar10: ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"],
             Cifar100: ["meta", "test", "train"], Svhn: ["test_32x32.mat", "train_32x32.mat"]}


@pytest.mark.parametrize("cls", [Cifar10, Cifar100, Svhn])
def test_standin_is_deterministic_in_the_real_layout_with_hidden_subclasses(tmp_path, cls):
    data = prepare_load(cls(), tmp_path / "a", standin_seed=5, **TINY_STANDIN)
    prepare_load(cls(), tmp_path / "b", standin_seed=5, **TINY_STANDIN)
    hashes = write_manifest(tmp_path / "a")
    assert hashes == write_manifest(tmp_path / "b")  # byte-identical raw files and images.h5
    assert sorted(hashes) == sorted([H5_NAME, *[f"{STANDIN_DIR}/{f}" for f in RAW_FILES[cls]]])
    prepare_load(cls(), tmp_path / "c", standin_seed=6, **TINY_STANDIN)
    assert write_manifest(tmp_path / "c")[H5_NAME] != hashes[H5_NAME]

    assert len(data) == 30 and data.meta["is_train"].sum() == 18 and "stand-in" in data.meta["source"]
    labels = data.targets[:, 0].long().numpy()
    sub = data.meta["subclass_labels"]
    assert data.meta["num_subclasses"] == 2
    for c in range(3):  # every class holds both hidden sub-classes, balanced, in train and in test
        for train in (True, False):
            rows = (labels == c) & (data.meta["is_train"] == train)
            assert np.bincount(sub[rows], minlength=2).tolist() == [rows.sum() // 2] * 2
    assert data.meta["class_names"] == ["circle", "ring", "square"]
    if cls is Cifar100:
        assert data.meta["coarse_labels"].tolist() == (labels // 2).tolist()
    # the same reader ingests the raw stand-in: the hidden sub-class is in the files themselves
    if cls is Svhn:
        assert "subclass" in scipy.io.loadmat(tmp_path / "a" / STANDIN_DIR / "train_32x32.mat")
    else:
        raw = load_pickle(tmp_path / "a" / STANDIN_DIR / ("train" if cls is Cifar100 else "data_batch_1"))
        assert b"subclass_labels" in raw and raw[b"data"].dtype == np.uint8


def test_standin_subclasses_differ_in_appearance():
    styles = standin_shapes.standin_styles(10, 4, np.random.default_rng(0))
    for row in styles:  # within a class, every variant has its own colour and texture
        assert len({s.colour for s in row}) == 4 and len({s.texture for s in row}) == 4
    # and the variants' palettes are shared across classes, so colour alone does not give the class
    assert len({s.colour for row in styles for s in row}) == len(standin_shapes.STANDIN_COLOURS)
    raw = image_classification.generate_standin(Cifar10.Config(standin_num_classes=2, standin_subclasses=3,
                                                standin_train_per_class=30, standin_test_per_class=3, standin_noise=0))
    # colour histograms alone put most images nearest their own (class, sub-class) centroid (chance: 1/6)
    feats = raw.images.reshape(len(raw.images), 3, -1).astype(float)
    hist = np.stack([np.histogram(f[c], bins=8, range=(0, 256))[0] for f in feats for c in range(3)]).reshape(
        len(feats), -1)
    keys = raw.labels["class"] * 10 + raw.subclass_labels
    centroids = {k: hist[keys == k].mean(0) for k in np.unique(keys)}
    nearest = np.array([min(centroids, key=lambda k: np.abs(h - centroids[k]).sum()) for h in hist])
    assert (nearest == keys).mean() > 0.6


# ---------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("backbone, width", [("vgg16", 0.0625), ("convnet4", 0.25), ("resnet18", 1.0)])
def test_classifier_shapes_and_shared_parameters(backbone, width):
    build = MODELS.get("image_classifier")
    x = torch.randn(2, 3, 32, 32)
    plain = build(num_classes=7, backbone=backbone, width=width)
    assert plain(x).shape == (2, 7)
    net = build(num_classes=7, backbone=backbone, width=width, aux_outputs=15)
    z = net.encode(x)
    assert z.shape == (2, net.backbone.out_features)
    main, aux = net.decode(z)
    assert main.shape == (2, 7) and aux.shape == (2, 15)
    shared = {id(p) for p in net.shared_parameters()}
    last = {id(p) for p in net.last_shared_parameters()}
    assert last and last < shared
    assert not shared & {id(p) for p in [*net.head.parameters(), *net.aux_head.parameters()]}
    assert len(net.state_dict()) == len(set(net.state_dict()))


def test_dataset_models_and_label_generator():
    data = fake_data(20, 4)
    for cls, family in ((Cifar10, "VGG16Features"), (Svhn, "ConvNet4")):
        ds = cls()
        cfg = cls.ModelConfig()
        model = ds.build_model(data, cfg, aux_outputs=50)
        gen = ds.build_label_generator(data, cfg, num_aux_classes=50)
        assert type(model.net.backbone).__name__ == family and type(gen.net.backbone).__name__ == family
        x = torch.randn(3, 3, 32, 32)
        main, aux = model.decode(model.encode(x))
        assert torch.equal(model(x), main)  # forward: what the dataset's losses and metrics expect
        assert main.shape == (3, 10) and aux.shape == (3, 50) and gen(x).shape == (3, 50)
        assert ds.build_model(data, cfg)(x).shape == (3, 10)
        assert ds.label_groups(data) == 10
        assert torch.equal(ds.label_group(data.targets[:5]), data.targets[:5, 0].long())
        losses = ds.per_task_losses((main, aux), torch.tensor([[1.0], [0.0], [9.0]]))
        assert losses.shape == (3, 1)
        assert torch.allclose(losses[:, 0], F.cross_entropy(main, torch.tensor([1, 0, 9]), reduction="none"))


# ---------------------------------------------------------------------------------------------- transforms, metrics


@pytest.fixture(scope="module")
def tiny_c10(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("c10")
    tiny = write_tiny_cifar10(tmp / "raw")
    ds = Cifar10()
    return ds, prepare_load(ds, tmp / "out", source="path", root=str(tiny.root))


@pytest.fixture(scope="module")
def tiny_svhn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svhn")
    tiny = write_tiny_svhn(tmp / "raw")
    ds = Svhn()
    return ds, prepare_load(ds, tmp / "out", source="path", root=str(tiny.root))


@pytest.mark.parametrize("which", ["tiny_c10", "tiny_svhn"])
def test_batch_transform_pads_crops_flips_and_normalises(request, which):
    ds, data = request.getfixturevalue(which)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8.0)[:, None]
    mean, std = torch.tensor(data.meta["mean"]).view(1, 3, 1, 1), torch.tensor(data.meta["std"]).view(1, 3, 1, 1)
    # batches are floats in [0, 1]; the network standardises them (its first layer, statistics from meta)
    standardize = ds.build_model(data, ds.ModelConfig()).standardize
    ev, ev_y = ds.batch_transform(x, y, train=False)
    assert torch.equal(ev, x.float() / 255)
    ev = standardize(ev)
    assert ev_y is y and ev.dtype == torch.float32
    assert torch.allclose(ev, ((x.double() / 255 - mean) / std).float(), atol=1e-5)

    a, ya = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(0))
    b, _ = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(0))
    c, _ = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(1))
    a, b, c = standardize(a), standardize(b), standardize(c)
    assert torch.equal(ya, y) and a.shape == (8, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    padded = F.pad(x, (4, 4, 4, 4)).double()
    flips = 0
    for i in range(8):  # each output is a 32-px window of its own zero-padded image, mirrored or not
        pixels = (a[i].double() * std[0] + mean[0]) * 255
        match = [flip for oy in range(9) for ox in range(9) for flip in (False, True)
                 if torch.allclose(pixels, padded[i, :, oy:oy + 32, ox:ox + 32].flip(-1) if flip
                                   else padded[i, :, oy:oy + 32, ox:ox + 32], atol=1e-3)]
        assert match
        flips += match[0]
    if ds.flip:
        assert flips > 0
    else:
        assert flips == 0  # SVHN: digits are never mirrored


def test_batch_transform_needs_no_load_and_the_networks_need_the_statistics():
    """The dataset holds no state: batch_transform works on a fresh object, and the statistics the networks
    standardise with come from the loaded data's meta (a TaskData without them is refused)."""
    x = torch.full((1, 3, 32, 32), 51, dtype=torch.uint8)
    out, _ = Cifar10().batch_transform(x, torch.zeros(1, 1), train=False)
    assert torch.allclose(out, torch.full((1, 3, 32, 32), 0.2))
    data = fake_data(20, 4)
    del data.meta["mean"]
    with pytest.raises(ValueError, match="no mean/std"):
        Cifar10().build_model(data, Cifar10.ModelConfig())
    with pytest.raises(ValueError, match="no mean/std"):
        Cifar10().build_label_generator(data, Cifar10.ModelConfig(), 5)


def test_metrics_by_hand(tiny_c10, monkeypatch):
    ds, data = tiny_c10
    monkeypatch.setattr(image_classification, "EVAL_CHUNK", 2)  # several chunks
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [1.0, 0, 0], [0, 0, 5.0], [0.5, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 2, 1])  # right, right, wrong, right, wrong
    fake = TaskData(data.inputs[:5], labels[:, None].float(), ["class"], data.meta)
    model = FixedLogits(logits, aux_outputs=3).train()
    m = ds.metrics(model, fake, torch.arange(5))
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["main_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert model.modes == [False] * 3 and model.training
    model.cursor = 0
    assert ds.main_loss(model, fake, torch.arange(5)) == pytest.approx(m["main_loss"])


def test_short_training_run_on_the_standin(tmp_path):
    """A few steps of the real trainer with STL and MAXL on a tiny stand-in (the generated-task hooks)."""
    from pipeline.config.params import parse_params
    from pipeline.engine.training import train_run

    ds = Cifar10()
    data = prepare_load(ds, tmp_path / "prep", **TINY_STANDIN)
    splits = ds.make_splits(data, Cifar10.SplitConfig(train_fraction=0.5, aux_fraction=0.2, val=4))
    for method in ("stl", "maxl"):
        params = parse_params({"dataset": "cifar10", "method": method, "seeds": [0],
                               "datasets": {"cifar10": {"train": {"steps": 2, "batch_size": 4, "eval_every": 2},
                                                        "model": {"width": 0.0625}}},
                               "methods": {"labels": {"psi": 2}}})
        result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
        assert np.isfinite(result.history["val_main_loss"]).all()
