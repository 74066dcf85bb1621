"""Oxford-IIIT Pet and Stanford Cars: the real-format loaders on tiny hand-written folders (labels, names, pixels,
the bounding-box crop), one clear error per bad file, the K-shot splits, the stand-in through the real loader,
and a label-learning method training a few steps on each."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pipeline.config.params import parse_params
from pipeline.datasets.oxford_pet.sources import read_pet
from pipeline.datasets.oxford_pet.task import OxfordPet
from pipeline.datasets.shared.base import DataError, TaskData
from pipeline.datasets.shared.fine_grained import FineGrainedSplitConfig, k_shot_splits
from pipeline.datasets.shared.splits import check_disjoint
from pipeline.datasets.stanford_cars.sources import read_cars
from pipeline.datasets.stanford_cars.task import StanfordCars
from pipeline.engine.training import train_run

TINY = {"standin_num_classes": 4, "standin_train_per_class": 12, "standin_test_per_class": 4}


def solid_jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, format="JPEG", quality=95)


# ---------------------------------------------------------------------------------------------- Oxford-IIIT Pet

PET_ROWS = [  # image, CLASS-ID, SPECIES, BREED ID, split; class 1 = a cat breed, 2 and 3 dog breeds
    ("Abyssinian_1", 1, 1, 1, "trainval"), ("Abyssinian_7", 1, 1, 1, "test"),
    ("american_bulldog_10", 2, 2, 1, "trainval"), ("american_bulldog_2", 2, 2, 1, "trainval"),
    ("beagle_3", 3, 2, 2, "test"), ("beagle_4", 3, 2, 2, "trainval"),
]


def write_tiny_pet(root: Path) -> dict[str, tuple[int, int, int]]:
    """Pet's layout written by hand: list.txt with its comment header, trainval.txt, test.txt, solid JPEGs."""
    (root / "annotations").mkdir(parents=True)
    colours = {}
    for i, (image, *_rest) in enumerate(PET_ROWS):
        colours[image] = (40 * i, 200 - 30 * i, 100)
        solid_jpeg(root / "images" / f"{image}.jpg", colours[image])
    line = "{} {} {} {}\n"
    (root / "annotations" / "list.txt").write_text(
        "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
        + "".join(line.format(*r[:4]) for r in PET_ROWS))
    for split in ("trainval", "test"):
        (root / "annotations" / f"{split}.txt").write_text(
            "".join(line.format(*r[:4]) for r in PET_ROWS if r[4] == split))
    return colours


def test_pet_loader_reads_labels_names_split_and_pixels(tmp_path):
    colours = write_tiny_pet(tmp_path)
    raw = read_pet(tmp_path, image_size=16)
    order = [r for r in PET_ROWS if r[4] == "trainval"] + [r for r in PET_ROWS if r[4] == "test"]
    assert raw.names["breed"] == ["Abyssinian", "american_bulldog", "beagle"]
    assert raw.names["species"] == ["cat", "dog"]
    assert raw.labels["breed"].tolist() == [r[1] - 1 for r in order]
    assert raw.labels["species"].tolist() == [r[2] - 1 for r in order]
    assert raw.is_train.tolist() == [r[4] == "trainval" for r in order]
    assert raw.images.shape == (6, 3, 16, 16) and raw.images.dtype == np.uint8
    for img, row in zip(raw.images, order):  # a solid image stays solid through the squash (JPEG: +-3)
        assert np.abs(img.reshape(3, -1).mean(1) - colours[row[0]]).max() < 4
    assert raw.subclass_labels is None  # real data has no hidden sub-classes


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "annotations/list.txt").write_text("#header\nAbyssinian_1 1 1\n"),
     r"list\.txt:2: expected '<Image> <CLASS-ID> <SPECIES> <BREED ID>'"),
    (lambda r: (r / "annotations/test.txt").unlink(), r"test\.txt is missing"),
    (lambda r: (r / "images/beagle_4.jpg").unlink(), r"beagle_4\.jpg is missing \(listed in .*trainval\.txt\)"),
    (lambda r: (r / "images/beagle_4.jpg").write_bytes(b"not a jpeg"), r"beagle_4\.jpg is not a readable image"),
    (lambda r: (r / "annotations/trainval.txt").write_text("Abyssinian_1 2 1 1\n"),
     r"trainval\.txt:1: Abyssinian_1 \(CLASS-ID 2\) has CLASS-ID 1 in list\.txt"),
    (lambda r: (r / "annotations/test.txt").write_text("Abyssinian_1 1 1 1\n"), r"Abyssinian_1 appears twice"),
    (lambda r: (r / "annotations/list.txt").write_text("Abyssinian_1 1 3 1\n"), r"list\.txt:1: SPECIES must be 1"),
    (lambda r: (r / "annotations/list.txt").write_text("Abyssinian_1 1 1 1\nbeagle_3 3 2 2\n"),
     r"list\.txt: CLASS-IDs must run 1\.\.C"),
])
def test_pet_loader_names_the_bad_file(tmp_path, damage, message):
    write_tiny_pet(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        read_pet(tmp_path)


# ---------------------------------------------------------------------------------------------- Stanford Cars

CARS_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012"]
CARS_TRAIN = [("00001.jpg", 2, (4, 3, 13, 10)), ("00002.jpg", 1, (1, 1, 30, 20)), ("00003.jpg", 3, (11, 6, 25, 17))]
CARS_TEST = [("00001.jpg", 3, (2, 2, 9, 9)), ("00002.jpg", 1, (20, 10, 30, 20))]


def annotations(rows: list[tuple[str, int, tuple[int, int, int, int]]], drop: str | None = None) -> np.ndarray:
    """A 1 x N struct array as in the devkit (fields bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname)."""
    fields = [f for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname") if f != drop]
    out = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, (fname, cls, (x1, y1, x2, y2)) in enumerate(rows):
        values = {"bbox_x1": np.uint16(x1), "bbox_y1": np.uint16(y1), "bbox_x2": np.uint16(x2),
                  "bbox_y2": np.uint16(y2), "class": np.uint8(cls), "fname": fname}
        out[0, i] = tuple(values[f] for f in fields)
    return out


def write_tiny_cars(root: Path) -> None:
    """The devkit layout by hand: grey 30 x 20 JPEGs with a red box exactly where the annotation says."""
    (root / "devkit").mkdir(parents=True)
    names = np.empty((1, 3), dtype=object)
    names[0, :] = CARS_NAMES
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": annotations(CARS_TRAIN)})
    scipy.io.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": annotations(CARS_TEST)})
    for folder, rows in (("cars_train", CARS_TRAIN), ("cars_test", CARS_TEST)):
        for fname, _, (x1, y1, x2, y2) in rows:
            img = np.full((20, 30, 3), 128, dtype=np.uint8)
            img[y1 - 1:y2, x1 - 1:x2] = (230, 20, 20)  # 1-based inclusive bounds
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(img).save(root / folder / fname, format="JPEG", quality=95)


def test_cars_loader_reads_the_devkit_and_crops_to_the_box(tmp_path):
    write_tiny_cars(tmp_path)
    raw = read_cars(tmp_path, image_size=16)
    assert raw.names["class"] == CARS_NAMES
    assert raw.labels["class"].tolist() == [c - 1 for _, c, _ in CARS_TRAIN + CARS_TEST]
    assert raw.is_train.tolist() == [True] * 3 + [False] * 2
    red = raw.images[:, 0].astype(float).mean((1, 2))
    assert red[1] > 200 and red[0] < 190  # image 2's box is the whole image; image 1's a small part
    boxed = read_cars(tmp_path, image_size=16, crop_to_bbox=True)
    inside = boxed.images[:, :, 2:-2, 2:-2].reshape(5, 3, -1).mean(2)  # away from the JPEG-blurred edge
    assert (inside[:, 0] > 200).all() and (inside[:, 1] < 60).all()  # only the red box is left


@pytest.mark.parametrize("damage, message", [
    (lambda r: scipy.io.savemat(r / "devkit" / "cars_train_annos.mat",
                                {"annotations": annotations(CARS_TRAIN, drop="class")}),
     r"cars_train_annos\.mat: annotations lacks the field\(s\) class"),
    (lambda r: scipy.io.savemat(r / "devkit" / "cars_train_annos.mat", {"annos": annotations(CARS_TRAIN)}),
     r"cars_train_annos\.mat: expected the variable annotations"),
    (lambda r: (r / "devkit" / "cars_meta.mat").unlink(), r"cars_meta\.mat is missing"),
    (lambda r: (r / "cars_test_annos_withlabels.mat").write_bytes(b"garbage"),
     r"cars_test_annos_withlabels\.mat is not a readable MATLAB file"),
    (lambda r: scipy.io.savemat(r / "cars_test_annos_withlabels.mat",
                                {"annotations": annotations([("00001.jpg", 4, (1, 1, 2, 2))])}),
     r"cars_test_annos_withlabels\.mat: annotation 1: class 4 is outside 1\.\.3"),
    (lambda r: scipy.io.savemat(r / "cars_test_annos_withlabels.mat",
                                {"annotations": annotations([("00001.jpg", 1, (5, 1, 2, 2))])}),
     r"annotation 1: bounding box \(5, 1, 2, 2\)"),
    (lambda r: (r / "cars_train" / "00003.jpg").unlink(),
     r"cars_train/00003\.jpg is missing \(listed in .*cars_train_annos\.mat\)"),
])
def test_cars_loader_names_the_bad_file(tmp_path, damage, message):
    write_tiny_cars(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        read_cars(tmp_path)


def test_cars_accepts_the_labelled_test_file_inside_devkit(tmp_path):
    write_tiny_cars(tmp_path)
    (tmp_path / "cars_test_annos_withlabels.mat").rename(tmp_path / "devkit" / "cars_test_annos_withlabels.mat")
    assert read_cars(tmp_path).is_train.tolist() == [True] * 3 + [False] * 2


# ---------------------------------------------------------------------------------------------- K-shot splits


def labelled_pool(counts: list[int], test_per_class: int = 5) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)] +
                            [np.full(test_per_class, c) for c in range(len(counts))])
    is_train = np.arange(len(labels)) < sum(counts)
    return labels, is_train


def test_k_shot_takes_exactly_k_per_class_seeded_and_disjoint():
    labels, is_train = labelled_pool([40, 50, 60, 45])
    cfg = FineGrainedSplitConfig(seed=3, k_shot=15, aux_fraction=0.1)
    s = k_shot_splits(labels, is_train, 4, cfg, "where")
    check_disjoint(s)
    labelled = np.concatenate([s["train"], s["aux"]])
    assert np.bincount(labels[labelled], minlength=4).tolist() == [15] * 4
    assert len(s["aux"]) == 6 and sorted(np.bincount(labels[s["aux"]], minlength=4).tolist()) == [1, 1, 2, 2]
    assert np.bincount(labels[s["val"]], minlength=4).tolist() == [12, 15, 18, 14]  # 30 % of each class
    assert is_train[s["val"]].all() and is_train[labelled].all()
    assert s["test"].tolist() == np.flatnonzero(~is_train).tolist()
    again = k_shot_splits(labels, is_train, 4, cfg, "where")
    other = k_shot_splits(labels, is_train, 4, cfg.model_copy(update={"seed": 4}), "where")
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["train"], other["train"])
    everything = k_shot_splits(labels, is_train, 4, cfg.model_copy(update={"k_shot": 0}), "where")
    assert len(everything["train"]) + len(everything["aux"]) == 195 - 59  # all but validation


def test_k_shot_short_classes_and_aux_errors():
    labels, is_train = labelled_pool([40, 20])
    with pytest.raises(ValueError, match=r"where\.k_shot = 15: class 1 has 20 official training images, 14 after"):
        k_shot_splits(labels, is_train, 2, FineGrainedSplitConfig(k_shot=15), "where")
    s = k_shot_splits(labels, is_train, 2, FineGrainedSplitConfig(k_shot=15, short_classes="all"), "where")
    assert np.bincount(labels[np.concatenate([s["train"], s["aux"]])]).tolist() == [15, 14]
    with pytest.raises(ValueError, match=r"aux_fraction = 0\.9: .* all 1 labelled training images of class"):
        k_shot_splits(labels, is_train, 2, FineGrainedSplitConfig(k_shot=1, aux_fraction=0.9), "where")


# ---------------------------------------------------------------------------------------------- stand-ins


@pytest.mark.parametrize("cls", [OxfordPet, StanfordCars])
def test_standin_round_trip_through_the_real_loader(cls, tmp_path):
    name = cls.name
    params = parse_params({"dataset": name, "method": "stl", "datasets": {name: {"prepare": TINY}}})
    ds = cls(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path / "a")
    data = ds.load(tmp_path / "a")
    raw_dir = tmp_path / "a" / "raw_standin"
    raw = (read_pet if cls is OxfordPet else read_cars)(raw_dir, image_size=32)
    assert torch.equal(data.inputs, torch.from_numpy(raw.images))  # prepared = what the real reader reads
    assert data.targets[:, 0].long().tolist() == raw.labels[cls.raw_format.labellings[0]].tolist()
    assert data.meta["num_classes"] == 4 and data.meta["num_subclasses"] == 3
    assert np.bincount(data.targets[:, 0].long().numpy()).tolist() == [16] * 4
    if cls is OxfordPet:  # the real layout: a commented list.txt and the two split files
        assert (raw_dir / "annotations" / "list.txt").read_text().startswith("#Image CLASS-ID SPECIES BREED ID")
        assert data.meta["species_names"] == ["cat", "dog"] and data.meta["class_names"][0] == "Circle"
    else:
        mat = scipy.io.loadmat(raw_dir / "devkit" / "cars_train_annos.mat")
        assert mat["annotations"].shape == (1, 48)
        assert mat["annotations"].dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    ds.prepare(params.dataset_config, tmp_path / "b")  # seeded: the same files, byte for byte
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        assert path.read_bytes() == (tmp_path / "b" / "raw_standin" / path.relative_to(raw_dir)).read_bytes()


def test_batch_transform_crops_224_of_256():
    ds = OxfordPet()
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32).to(torch.uint8)
    y = torch.zeros(2, 1)
    xt, _ = ds.batch_transform(x, y, train=True, generator=torch.Generator().manual_seed(0))
    xe, _ = ds.batch_transform(x, y, train=False)
    assert xt.shape == xe.shape == (2, 3, 28, 28)
    assert torch.equal(xe, x[:, :, 2:30, 2:30].float() / 255)  # the centre window


@pytest.mark.parametrize("cls, method", [(OxfordPet, "auxilearn_labels"), (StanfordCars, "maxl")])
def test_label_learning_trains_on_the_standin(cls, method, tmp_path):
    name = cls.name
    params = parse_params({
        "dataset": name, "method": method, "seeds": [0],
        "datasets": {name: {"prepare": TINY, "split": {"k_shot": 6, "aux_fraction": 0.2},
                            "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "log_every": 1},
                            "model": {"width": 0.125}, "methods": {"bilevel": {"hyper_every": 2}}}},
        "methods": {"labels": {"psi": 2}}})
    ds = cls(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    splits = ds.make_splits(data, params.split)
    assert {k: len(v) for k, v in splits.items()} == {"train": 19, "aux": 5, "val": 16, "test": 16}
    result = train_run(ds, data, splits, params, 0, device=torch.device("cpu"))
    assert np.isfinite(result.history["val_main_loss"]).all()
    if method == "auxilearn_labels":
        assert result.history["hyper_step"] == [2, 4]


def test_resnet18_is_the_papers_network():
    params = parse_params({"dataset": "oxford_pet", "method": "stl",
                           "datasets": {"oxford_pet": {"model": {"backbone": "resnet18", "small_stem": False}}}})
    data = TaskData(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 1), ["breed"],
                    {"num_classes": 37, "mean": [0.5] * 3, "std": [0.25] * 3})
    net = OxfordPet(params.profile.model).build_model(data, params.profile.model, aux_outputs=5)
    main, aux = net.decode(net.encode(torch.rand(2, 3, 28, 28)))
    assert main.shape == (2, 37) and aux.shape == (2, 5)
    assert parse_params({"dataset": "stanford_cars", "method": "maxl"}).dataset_config.known_label_groups() == 10
    real = parse_params({"dataset": "stanford_cars", "method": "maxl",
                         "datasets": {"stanford_cars": {"prepare": {"source": "path"}}}})
    assert real.dataset_config.known_label_groups() == 196 and real.split.short_classes == "all"


def test_defaults_listing_works_for_the_label_datasets():
    """`python -m pipeline.config defaults --dataset oxford_pet`: the default method needs given auxiliaries, so the
    listing takes the first method that fits instead of refusing."""
    from pipeline.config.params import defaults_yaml

    text = defaults_yaml(dataset="oxford_pet")
    assert "method: auxilearn_labels" in text and "k_shot: 30" in text and "image_size: 32" in text
    assert "crop_to_bbox: false" in defaults_yaml(dataset="stanford_cars", method="maxl")
