"""CINIC-10 and PASCAL-VOC12S (MAXL Table 1): the real-format loaders on tiny hand-written folders (labels, names,
splits, pixels), VOC's one-label rule on a hand case, one clear error per bad file, ``valid/`` as CINIC's
validation split, the stand-ins through the real loaders, the ResNet-50 backbone, and MAXL training a few steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet50

from pipeline.config.params import parse_params
from pipeline.datasets.cinic10.sources import read_cinic10
from pipeline.datasets.cinic10.task import Cinic10
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.splits import check_disjoint
from pipeline.datasets.voc12s.sources import VocObject, annotation_xml, main_object, read_objects, read_voc
from pipeline.datasets.voc12s.task import Voc12s
from pipeline.engine.training import train_run
from pipeline.models.classifiers import ImageClassifier, ResNet50Features

# ---------------------------------------------------------------------------------------------- ResNet-50


def test_resnet50_at_width_1_has_torchvisions_layers_and_scales_with_width():
    ours, theirs = ResNet50Features(1.0, small_stem=False), resnet50(weights=None)
    theirs.fc = torch.nn.Identity()
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(v.shape) for v in theirs.state_dict().values()]
    assert ours.out_features == 2048
    small = ImageClassifier(10, "resnet50", width=0.125, aux_outputs=7)
    assert small.backbone.out_features == 256
    main, aux = small.decode(small.encode(torch.rand(2, 3, 32, 32)))
    assert main.shape == (2, 10) and aux.shape == (2, 7)
    assert small.last_shared_parameters()[0] is next(small.backbone.stages[-1][-1].parameters())


# ---------------------------------------------------------------------------------------------- CINIC-10

CINIC = {  # folder -> class -> [(file, colour)]
    "train": {"airplane": [("cifar10-train-1.png", (250, 0, 0)), ("n02691156_7.png", (0, 250, 0))],
              "bird": [("cifar10-train-9.png", (0, 0, 250))]},
    "valid": {"airplane": [("cifar10-valid-3.png", (10, 20, 30))], "bird": [("n01530575_2.png", (90, 90, 90))]},
    "test": {"airplane": [("cifar10-test-4.png", (40, 50, 60))], "bird": [("cifar10-test-8.png", (70, 80, 90))]},
}


def write_tiny_cinic(root: Path) -> None:
    for folder, classes in CINIC.items():
        for cls, files in classes.items():
            (root / folder / cls).mkdir(parents=True)
            for name, rgb in files:
                if name.startswith("n01530575"):  # an ImageNet-derived greyscale PNG, as CINIC has a few
                    Image.new("L", (32, 32), rgb[0]).save(root / folder / cls / name)
                else:
                    Image.new("RGB", (32, 32), rgb).save(root / folder / cls / name)


def test_cinic_loader_reads_classes_folders_and_pixels(tmp_path):
    write_tiny_cinic(tmp_path)
    raw = read_cinic10(tmp_path)
    rows = [(f, c, rgb) for f, classes in CINIC.items() for c, files in classes.items() for _, rgb in files]
    assert raw.names["category"] == ["airplane", "bird"] and raw.names["folder"] == ["train", "valid", "test"]
    assert raw.labels["category"].tolist() == [["airplane", "bird"].index(c) for _, c, _ in rows]
    assert raw.labels["folder"].tolist() == [["train", "valid", "test"].index(f) for f, _, _ in rows]
    assert raw.is_train.tolist() == [f == "train" for f, _, _ in rows]
    assert raw.images.shape == (7, 3, 32, 32)
    assert raw.images[:, :, 0, 0].tolist() == [list(rgb) for _, _, rgb in rows]  # PNG: exact, greyscale as RGB
    assert raw.subclass_labels is None


@pytest.mark.parametrize("damage, message", [
    (lambda r: [p.unlink() for p in (r / "valid" / "bird").iterdir()] and (r / "valid" / "bird").rmdir(),
     r"valid: class folders \['airplane'\] differ from train/'s \['airplane', 'bird'\]"),
    (lambda r: [p.unlink() for p in (r / "test" / "bird").iterdir()], r"test/bird holds no \.png images"),
    (lambda r: (r / "test" / "airplane" / "cifar10-test-4.png").write_bytes(b"not a png"),
     r"cifar10-test-4\.png is not a readable image"),
    (lambda r: __import__("shutil").rmtree(r / "valid"), r"valid is missing \(expected in a CINIC-10 folder"),
])
def test_cinic_loader_names_the_bad_file(tmp_path, damage, message):
    write_tiny_cinic(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        read_cinic10(tmp_path)


# ---------------------------------------------------------------------------------------------- VOC's label rule


def test_label_is_the_largest_non_difficult_object():
    person = VocObject("person", False, (1, 1, 10, 20))  # 10 x 20 = 200 px (1-based inclusive)
    dog = VocObject("dog", False, (5, 5, 24, 14))  # 20 x 10 = 200: a tie with person, person comes first
    cat = VocObject("cat", False, (0, 0, 14, 14))  # 15 x 15 = 225
    sofa = VocObject("sofa", True, (1, 1, 100, 100))  # much larger, but difficult
    assert person.area == 200 and cat.area == 225
    assert main_object([person, dog]).name == "person" and main_object([dog, person]).name == "dog"
    assert main_object([person, sofa, cat, dog]).name == "cat"
    assert main_object([sofa, VocObject("chair", True, (1, 1, 50, 50))]).name == "sofa"  # all difficult


VOC_IMAGES = {  # id -> (split, objects); the classes are aeroplane, cat, person
    "2008_000001": ("train", [VocObject("person", False, (10, 10, 29, 49)),  # 20 x 40 = 800
                              VocObject("cat", False, (1, 1, 30, 30)),  # 30 x 30 = 900: the label
                              VocObject("aeroplane", True, (1, 1, 60, 40))]),  # larger, difficult
    "2008_000002": ("train", [VocObject("aeroplane", False, (1, 1, 30, 20))]),
    "2008_000003": ("val", [VocObject("person", True, (1, 1, 5, 5))]),  # only difficult: person, flagged 0
    "2008_000004": ("val", [VocObject("cat", False, (3, 3, 12, 12)), VocObject("person", False, (1, 1, 40, 30))]),
}
VOC_CLASSES = ["aeroplane", "cat", "person"]
VOC_LABELS = {"2008_000001": "cat", "2008_000002": "aeroplane", "2008_000003": "person", "2008_000004": "person"}


def write_tiny_voc(root: Path) -> Path:
    """VOC 2012's layout by hand: lists with VOC's padded flags, XMLs, solid 60 x 40 JPEGs."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    for i, (image, (_, objects)) in enumerate(VOC_IMAGES.items()):
        (voc / "Annotations" / f"{image}.xml").write_text(annotation_xml(image, 60, 40, objects))
        Image.new("RGB", (60, 40), (50 * i, 100, 200 - 40 * i)).save(voc / "JPEGImages" / f"{image}.jpg", quality=95)
    for split in ("train", "val"):
        for cls in VOC_CLASSES:
            lines = []
            for image, (s, objects) in VOC_IMAGES.items():
                if s == split:
                    mine = [o.difficult for o in objects if o.name == cls]
                    lines.append(f"{image} {-1 if not mine else (0 if all(mine) else 1):2d}\n")
            (voc / "ImageSets" / "Main" / f"{cls}_{split}.txt").write_text("".join(lines))
    return voc


def test_voc_loader_labels_each_image_by_the_rule(tmp_path):
    write_tiny_voc(tmp_path)
    raw = read_voc(tmp_path, image_size=16)
    order = list(VOC_IMAGES)
    assert raw.names["class"] == VOC_CLASSES
    assert [VOC_CLASSES[c] for c in raw.labels["class"]] == [VOC_LABELS[i] for i in order]
    assert raw.is_train.tolist() == [VOC_IMAGES[i][0] == "train" for i in order]
    assert raw.images.shape == (4, 3, 16, 16)
    assert np.abs(raw.images[1].reshape(3, -1).mean(1) - (50, 100, 160)).max() < 4  # squashed solid JPEG
    assert read_voc(tmp_path / "VOCdevkit" / "VOC2012", image_size=16).labels["class"].tolist() == \
        raw.labels["class"].tolist()  # VOC2012's folder itself is accepted as root


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("damage, message", [
    (lambda v: (v / "Annotations" / "2008_000002.xml").unlink(), r"2008_000002\.xml is missing"),
    (lambda v: _edit(v / "Annotations" / "2008_000002.xml", "</annotation>", ""),
     r"2008_000002\.xml is not well-formed XML"),
    (lambda v: _edit(v / "Annotations" / "2008_000002.xml", "<xmax>30</xmax>", "<xmax>thirty</xmax>"),
     r"2008_000002\.xml: object 1 \(aeroplane\): bndbox coordinates must be numbers"),
    (lambda v: _edit(v / "Annotations" / "2008_000001.xml", "<name>person</name>", "<name></name>"),
     r"2008_000001\.xml: object 1 has no <name>"),
    (lambda v: _edit(v / "Annotations" / "2008_000004.xml", "<name>person</name>", "<name>horse</name>"),
     r"2008_000004\.xml: object class 'horse' has no ImageSets/Main list"),
    (lambda v: (v / "JPEGImages" / "2008_000004.jpg").unlink(),
     r"2008_000004\.jpg is missing \(listed in .*aeroplane_val\.txt\)"),
    (lambda v: _edit(v / "ImageSets" / "Main" / "cat_train.txt", "2008_000001  1", "2008_000001 yes"),
     r"cat_train\.txt:1: expected '<image id> <1\|-1\|0>'"),
    (lambda v: _edit(v / "ImageSets" / "Main" / "cat_train.txt", "2008_000001  1", "2008_000001 -1"),
     r"2008_000001\.xml: the image's label is its cat, but .*cat_train\.txt flags 2008_000001 -1"),
    (lambda v: _edit(v / "ImageSets" / "Main" / "person_val.txt", "2008_000004", "2008_000009"),
     r"person_val\.txt and .*aeroplane_val\.txt list different images"),
    (lambda v: (v / "ImageSets" / "Main" / "cat_val.txt").unlink(),
     r"the \*_val\.txt lists name the classes \['aeroplane', 'person'\]"),
])
def test_voc_loader_names_the_bad_file(tmp_path, damage, message):
    damage(write_tiny_voc(tmp_path))
    with pytest.raises(DataError, match=message):
        read_voc(tmp_path)


def test_voc_root_without_the_devkit_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"VOCdevkit/VOC2012/ImageSets/Main is a folder"):
        read_voc(tmp_path)


# ---------------------------------------------------------------------------------------------- stand-ins

CINIC_TINY = {"standin_num_classes": 3, "standin_train_per_class": 6, "standin_valid_per_class": 3,
              "standin_test_per_class": 2}
VOC_TINY = {"standin_num_classes": 3, "standin_train_per_class": 10, "standin_test_per_class": 4,
            "standin_difficult": 0.5, "image_size": 48}


def _same_bytes(a: Path, b: Path) -> None:
    files = sorted(p for p in a.rglob("*") if p.is_file())
    assert files
    for path in files:
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes(), path


def test_cinic_standin_round_trip_and_valid_is_the_validation_split(tmp_path):
    params = parse_params({"dataset": "cinic10", "method": "maxl", "datasets": {"cinic10": {
        "prepare": CINIC_TINY, "split": {"val": 6, "seed": 3}}}})
    ds = Cinic10(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path / "a")
    data = ds.load(tmp_path / "a")
    raw_dir = tmp_path / "a" / "raw_standin"
    assert sorted(p.name for p in raw_dir.iterdir()) == ["standin_subclasses.txt", "test", "train", "valid"]
    assert len(list((raw_dir / "valid" / "circle").glob("*.png"))) == 3
    raw = read_cinic10(raw_dir)
    assert torch.equal(data.inputs, torch.from_numpy(raw.images))
    assert data.targets[:, 0].long().tolist() == raw.labels["category"].tolist()
    assert data.meta["class_names"] == ["circle", "ring", "square"] and data.meta["num_subclasses"] == 4
    folder = np.asarray(data.meta["folder_labels"])
    assert np.bincount(folder).tolist() == [18, 9, 6]
    splits = ds.make_splits(data, params.split)
    check_disjoint(splits)
    assert (folder[splits["val"]] == 1).all() and len(splits["val"]) == 6
    assert (folder[splits["test"]] == 2).all() and len(splits["test"]) == 6
    assert sorted(np.concatenate([splits["train"], splits["aux"]]).tolist()) == np.flatnonzero(folder == 0).tolist()
    with pytest.raises(ValueError, match=r"val = 10 exceeds the 9 images of the official validation split"):
        ds.make_splits(data, params.split.model_copy(update={"val": 10}))
    ds.prepare(params.dataset_config, tmp_path / "b")  # seeded: the same files, byte for byte
    _same_bytes(raw_dir, tmp_path / "b" / "raw_standin")


def test_voc_standin_round_trip_exercises_the_label_rule(tmp_path):
    params = parse_params({"dataset": "voc12s", "method": "maxl", "datasets": {"voc12s": {
        "prepare": VOC_TINY, "split": {"val": 4}}}})
    ds = Voc12s(params.profile.model)
    ds.prepare(params.dataset_config, tmp_path / "a")
    data = ds.load(tmp_path / "a")
    voc = tmp_path / "a" / "raw_standin" / "VOCdevkit" / "VOC2012"
    raw = read_voc(voc.parents[1], image_size=48)
    assert torch.equal(data.inputs, torch.from_numpy(raw.images)) and data.inputs.shape == (42, 3, 48, 48)
    assert data.targets[:, 0].long().tolist() == raw.labels["class"].tolist()
    assert data.meta["num_classes"] == 3 and np.bincount(raw.labels["class"]).tolist() == [14, 14, 14]
    ids = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert len(ids) == 30 and len((voc / "ImageSets" / "Main" / "val.txt").read_text().split()) == 12
    objects = [read_objects(voc / "Annotations" / f"{i}.xml") for i in ids]
    several = sum(len({o.name for o in objs if not o.difficult}) > 1 for objs in objects)
    # images whose largest object is difficult: the rule labels them by a smaller, non-difficult one
    skipped = sum(max(objs, key=lambda o: o.area).difficult for objs in objects)
    assert several >= 3 and skipped >= 5
    names = data.meta["class_names"]
    assert [names[c] for c in raw.labels["class"][:30]] == [main_object(objs).name for objs in objects]
    splits = ds.make_splits(data, params.split)
    check_disjoint(splits)
    assert {k: len(v) for k, v in splits.items()} == {"train": 23, "aux": 1, "val": 4, "test": 12}
    ds.prepare(params.dataset_config, tmp_path / "b")
    _same_bytes(voc.parents[1], tmp_path / "b" / "raw_standin")


@pytest.mark.parametrize("name, prepare, size, crop", [("cinic10", CINIC_TINY, 32, 32), ("voc12s", VOC_TINY, 48, 48)])
def test_maxl_trains_on_the_prepared_standin(name, prepare, size, crop, tmp_path):
    params = parse_params({
        "dataset": name, "method": "maxl", "seeds": [0],
        "datasets": {name: {"prepare": prepare, "split": {"val": 4},
                            "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "log_every": 1},
                            "model": {"width": 0.0625}}},
        "methods": {"labels": {"psi": 2}}})
    ds = {"cinic10": Cinic10, "voc12s": Voc12s}[name](params.profile.model)
    ds.prepare(params.dataset_config, tmp_path)
    data = ds.load(tmp_path)
    assert data.inputs.shape[1:] == (3, size, size) and data.inputs.dtype == torch.uint8
    x, _ = ds.batch_transform(data.inputs[:3], data.targets[:3], train=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, crop, crop) and x.dtype == torch.float32
    net = ds.build_model(data, params.profile.model, aux_outputs=6)
    main, aux = net.decode(net.encode(x))
    assert main.shape == (3, 3) and aux.shape == (3, 6)
    result = train_run(ds, data, ds.make_splits(data, params.split), params, 0, device=torch.device("cpu"))
    assert np.isfinite(result.history["val_main_loss"]).all()


def test_defaults():
    cinic = parse_params({"dataset": "cinic10", "method": "maxl"})
    voc = parse_params({"dataset": "voc12s", "method": "maxl"})
    assert cinic.profile.model.backbone == voc.profile.model.backbone == "resnet50"
    assert cinic.profile.model.resolved_width == 0.125 and cinic.profile.model.small_stem
    assert not voc.profile.model.small_stem and voc.dataset_config.image_size == 96
    assert cinic.split.train_fraction == 1.0 and voc.split.train_fraction == 0.8
    assert cinic.dataset_config.known_label_groups() == voc.dataset_config.known_label_groups() == 10
    real = parse_params({"dataset": "voc12s", "method": "maxl", "datasets": {"voc12s": {"prepare": {"source": "path"}}}})
    assert real.dataset_config.known_label_groups() == 20
