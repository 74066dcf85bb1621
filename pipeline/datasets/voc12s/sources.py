"""PASCAL VOC 2012's folder ``VOCdevkit/VOC2012`` as the single-label PASCAL-VOC12S of MAXL (Table 1): the
classification lists ``ImageSets/Main/<class>_{train,val}.txt`` (one ``<image id> <flag>`` per line, flag 1: the
image has a non-difficult object of the class, 0: only difficult ones, -1: none), the annotations
``Annotations/<id>.xml`` and the images ``JPEGImages/<id>.jpg``, squashed to ``image_size`` (MAXL: 96).

**One label per image.** MAXL's paper does not say how an image with objects of several classes is labelled, and
its public code has no VOC loader, so this reader uses a rule of its own: the class of the **largest
non-difficult object** of the image's XML, by bounding-box area in VOC's 1-based inclusive pixels ((xmax − xmin
+ 1)·(ymax − ymin + 1)), the first in the file on a tie; an image whose objects are all difficult takes its
largest difficult object. That class must not be flagged −1 for the image in its list (the lists and the XMLs
must agree). The classes are the sorted ``<class>`` names of the ``*_train.txt`` lists (VOC's usual order,
aeroplane .. tvmonitor); ``*_val.txt`` must name the same ones. Images of the ``*_train`` lists are the official
training split, those of ``*_val`` the test split. XMLs are parsed with the standard library's expat parser.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.core.progress import counted
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.fine_grained import read_subclasses, write_subclasses
from pipeline.datasets.shared.image_classification import RawFormat, check_labels
from pipeline.datasets.shared.images import read_rgb
from pipeline.datasets.shared.raw_images import RawImages

VOC_DIR = Path("VOCdevkit/VOC2012")
SPLITS = {True: "train", False: "val"}  # is_train -> the list suffix
EXPECTED = ("VOCdevkit/VOC2012/ of PASCAL VOC 2012 (ImageSets/Main/<class>_train.txt and <class>_val.txt, "
            "Annotations/<id>.xml, JPEGImages/<id>.jpg)")
FLAGS = (-1, 0, 1)


@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` of an annotation: class name, the difficult flag, and its box (xmin, ymin, xmax, ymax)."""

    name: str
    difficult: bool
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        """The box's area in VOC's 1-based inclusive pixel coordinates."""
        xmin, ymin, xmax, ymax = self.box
        return (xmax - xmin + 1) * (ymax - ymin + 1)


def main_object(objects: Sequence[VocObject]) -> VocObject:
    """The object that labels the image: the largest non-difficult one (the first on a tie), or the largest
    difficult one when all are difficult."""
    if not objects:
        raise ValueError("an image needs at least one object")
    candidates = [o for o in objects if not o.difficult] or list(objects)
    return max(candidates, key=lambda o: o.area)  # max keeps the first of equal areas


def _text(element: ET.Element, tag: str, path: Path, what: str) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise DataError(f"{path}: {what} has no <{tag}>")
    return found.text.strip()


def read_objects(path: Path) -> list[VocObject]:
    """The objects of the annotation file ``path``; a missing file, malformed XML or a bad box is a ``DataError``
    naming it."""
    if not path.is_file():
        raise DataError(f"{path} is missing (every listed image needs its annotation)")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path} is not well-formed XML: {err}") from None
    objects = []
    for k, obj in enumerate(root.iter("object"), 1):
        what = f"object {k}"
        name = _text(obj, "name", path, what)
        difficult = obj.findtext("difficult", default="0").strip()
        if difficult not in ("0", "1"):
            raise DataError(f"{path}: {what} ({name}): <difficult> must be 0 or 1, got {difficult!r}")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: {what} ({name}) has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(_text(box, t, path, f"{what}'s bndbox"))
                                      for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as err:
            raise DataError(f"{path}: {what} ({name}): bndbox coordinates must be numbers ({err})") from None
        if xmax < xmin or ymax < ymin:
            raise DataError(f"{path}: {what} ({name}): bndbox ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has "
                            "xmax < xmin or ymax < ymin")
        objects.append(VocObject(name, difficult == "1", (xmin, ymin, xmax, ymax)))
    if not objects:
        raise DataError(f"{path}: no <object> (every listed image needs one to be labelled)")
    return objects


def voc_folder(root: Path) -> Path:
    """``root/VOCdevkit/VOC2012``, or ``root`` itself when it holds ``ImageSets/Main`` (VOC2012's contents)."""
    root = Path(root)
    for folder in (root, root / VOC_DIR):
        if (folder / "ImageSets" / "Main").is_dir():
            return folder
    raise DataError(f"{root}: neither {root / 'ImageSets/Main'} nor {root / VOC_DIR / 'ImageSets/Main'} is a folder "
                    f"(expected {EXPECTED})")


def _read_list(path: Path) -> dict[str, int]:
    """``<image id> <flag>`` lines -> {id: flag}, in file order."""
    flags: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
            raise DataError(f"{path}:{lineno}: expected '<image id> <1|-1|0>', got {line.strip()!r}")
        if parts[0] in flags:
            raise DataError(f"{path}:{lineno}: image {parts[0]} is listed twice")
        flags[parts[0]] = int(parts[1])
    return flags


def read_lists(main: Path, split: str) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """The classes (sorted), the image ids (in the first class's file order) and per class {id: flag} of the
    ``<class>_<split>.txt`` lists in ``main``; every list must name the same images."""
    suffix = f"_{split}.txt"
    classes = sorted(p.name[:-len(suffix)] for p in main.glob(f"*{suffix}") if p.is_file())
    if not classes:
        raise DataError(f"{main}: no <class>{suffix} lists (expected {EXPECTED})")
    flags = {c: _read_list(main / f"{c}{suffix}") for c in classes}
    ids = list(flags[classes[0]])
    for c in classes[1:]:
        if set(flags[c]) != set(ids):
            other = sorted(set(flags[c]) ^ set(ids))[0]
            raise DataError(f"{main / (c + suffix)} and {main / (classes[0] + suffix)} list different images "
                            f"(e.g. {other})")
    return classes, ids, flags


def read_voc(root: Path, image_size: int = 96) -> RawImages:
    """The images of the ``*_train`` (official train) and ``*_val`` (test) lists, squashed to ``image_size``, each
    labelled by ``main_object`` of its annotation (the labelling ``class``)."""
    voc = voc_folder(root)
    main = voc / "ImageSets" / "Main"
    classes, ids, flags, is_train = [], [], {}, []
    for train, split in SPLITS.items():
        names, split_ids, split_flags = read_lists(main, split)
        if classes and names != classes:
            raise DataError(f"{main}: the *_val.txt lists name the classes {names}, the *_train.txt lists {classes}")
        classes = names
        for c in names:
            flags.setdefault(c, {}).update(split_flags[c])
        twice = set(ids) & set(split_ids)
        if twice:
            raise DataError(f"{main}: image {sorted(twice)[0]} is in both the *_train and the *_val lists")
        ids += split_ids
        is_train += [train] * len(split_ids)
    index = {c: k for k, c in enumerate(classes)}
    labels = []
    for image in counted(ids, "prepare voc12s: annotations read", len(ids), "images"):
        xml = voc / "Annotations" / f"{image}.xml"
        obj = main_object(read_objects(xml))
        if obj.name not in index:
            raise DataError(f"{xml}: object class {obj.name!r} has no ImageSets/Main list (classes: {classes})")
        split = SPLITS[is_train[len(labels)]]
        if flags[obj.name][image] == -1:
            raise DataError(f"{xml}: the image's label is its {'difficult ' if obj.difficult else ''}{obj.name}, "
                            f"but {main / f'{obj.name}_{split}.txt'} flags {image} -1 (absent)")
        labels.append(index[obj.name])
    pixels = np.stack([read_rgb(voc / "JPEGImages" / f"{image}.jpg", image_size,
                                f"{main / f'{classes[0]}_{SPLITS[train]}.txt'}")
                       for image, train in counted(list(zip(ids, is_train)), "prepare voc12s: images read", len(ids),
                                                   "images")])
    raw = RawImages(pixels, np.asarray(is_train, dtype=bool), {"class": np.asarray(labels, dtype=np.int64)},
                    {"class": classes}, read_subclasses(voc, ids))
    return check_labels(raw, voc)


# ---------------------------------------------------------------------------------------------- writing


@dataclass
class VocImages(RawImages):
    """A source to write in VOC's layout: ``images`` uint8 [N, 3, H, W] (any H, W), the objects of each image
    (``labels["class"]`` must be ``main_object``'s class), and the image ids."""

    objects: list[list[VocObject]] | None = None
    ids: list[str] | None = None


def annotation_xml(image: str, width: int, height: int, objects: Sequence[VocObject]) -> str:
    """A VOC 2012 annotation file's text for one image."""
    def obj(o: VocObject) -> str:
        xmin, ymin, xmax, ymax = (f"{v:g}" for v in o.box)
        return (f"\t<object>\n\t\t<name>{o.name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
                f"\t\t<difficult>{int(o.difficult)}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n"
                f"\t\t\t<ymin>{ymin}</ymin>\n\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n"
                "\t</object>\n")
    return (f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{image}.jpg</filename>\n"
            f"\t<source>\n\t\t<database>auxbench stand-in</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            f"\t<segmented>0</segmented>\n" + "".join(obj(o) for o in objects) + "</annotation>\n")


def write_voc(root: Path, raw: RawImages) -> None:
    """``root/VOCdevkit/VOC2012`` from ``raw``: JPEGImages/<id>.jpg, Annotations/<id>.xml, and ImageSets/Main's
    ``<class>_{train,val}.txt`` with their flags plus ``train.txt``/``val.txt``. A ``VocImages`` brings its objects
    and ids; any other source gets one whole-image object per image and ids ``2012_<n>``."""
    voc = Path(root) / VOC_DIR
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    names, cls = raw.names["class"], raw.labels["class"]
    n, (height, width) = len(raw.images), raw.images.shape[-2:]
    ids = getattr(raw, "ids", None) or [f"2012_{i:06d}" for i in range(n)]
    objects = getattr(raw, "objects", None) or [
        [VocObject(names[c], False, (1, 1, width, height))] for c in cls]
    lists: dict[bool, list[tuple[str, list[VocObject]]]] = {True: [], False: []}
    for i in range(n):
        if main_object(objects[i]).name != names[cls[i]]:
            raise ValueError(f"image {ids[i]}: labelled {names[cls[i]]}, but its largest object is "
                             f"{main_object(objects[i]).name}")
        Image.fromarray(raw.images[i].transpose(1, 2, 0)).save(voc / "JPEGImages" / f"{ids[i]}.jpg", format="JPEG",
                                                               quality=95)
        (voc / "Annotations" / f"{ids[i]}.xml").write_text(annotation_xml(ids[i], width, height, objects[i]))
        lists[bool(raw.is_train[i])].append((ids[i], objects[i]))
    for train, split in SPLITS.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{image}\n" for image, _ in lists[train]))
        for name in names:
            def flag(objs: list[VocObject]) -> int:
                present = [o.difficult for o in objs if o.name == name]
                return -1 if not present else (0 if all(present) else 1)
            # VOC pads the flag to two characters ("2008_000008 -1", "2008_000015  1")
            (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(
                "".join(f"{image} {flag(objs):2d}\n" for image, objs in lists[train]))
    write_subclasses(voc, ids, raw.subclass_labels)


VOC_FORMAT = RawFormat(read_voc, write_voc, ("class",), "PASCAL VOC 2012", EXPECTED)
