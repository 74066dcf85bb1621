"""Oxford-IIIT Pet's on-disk format: ``annotations/list.txt`` (comment lines starting with ``#``, then one line
``<Image> <CLASS-ID> <SPECIES> <BREED ID>`` per image: class 1..37, species 1 = cat, 2 = dog, breed id within the
species), the official split ``annotations/trainval.txt`` and ``annotations/test.txt`` (the same four fields) and
the JPEGs ``images/<Image>.jpg``. A breed's name is its images' name without the trailing ``_<number>`` (cats'
names are capitalised, dogs' are not). The reader parses and cross-checks them (a ``DataError`` names the file and
line); the writer serves the stand-in and the tests."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.core.progress import counted
from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.fine_grained import read_subclasses, write_subclasses
from pipeline.datasets.shared.image_classification import RawFormat, check_labels
from pipeline.datasets.shared.images import read_rgb
from pipeline.datasets.shared.raw_images import RawImages

EXPECTED = "annotations/list.txt, annotations/trainval.txt, annotations/test.txt and images/ of Oxford-IIIT Pet"
LIST, TRAINVAL, TEST = "annotations/list.txt", "annotations/trainval.txt", "annotations/test.txt"
SPECIES = ("cat", "dog")  # SPECIES 1 and 2
LIST_HEADER = ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
               "#BREED ID: 1-25:Cat 1:12:Dog\n#All images with 1st letter as captial are cat images\n"
               "#images with small first letter are dog images\n")
_NUMBER = re.compile(r"_\d+$")


def breed_name(image: str) -> str:
    """``Abyssinian_100`` -> ``Abyssinian``; ``american_bulldog_12`` -> ``american_bulldog``."""
    return _NUMBER.sub("", image)


def _lines(path: Path) -> Iterator[tuple[int, str, int, int, int]]:
    """(line number, image, class id, species, breed id) of every line that is neither blank nor a comment."""
    if not path.is_file():
        raise DataError(f"{path} is missing (expected in an Oxford-IIIT Pet folder: {EXPECTED})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            raise DataError(f"{path}:{lineno}: expected '<Image> <CLASS-ID> <SPECIES> <BREED ID>' (three integers), "
                            f"got {line.strip()!r}")
        cid, species, breed = (int(p) for p in parts[1:])
        if species not in (1, 2):
            raise DataError(f"{path}:{lineno}: SPECIES must be 1 (cat) or 2 (dog), got {species}")
        yield lineno, parts[0], cid, species, breed


def read_pet(root: Path, image_size: int = 32) -> RawImages:
    """The images of trainval.txt (official train) and test.txt, squashed to ``image_size``; the labellings
    ``breed`` (the main task: 0-based CLASS-ID - 1) and ``species`` (cat, dog). Class names come from list.txt."""
    root = Path(root)
    list_path = root / LIST
    listed: dict[str, tuple[int, int]] = {}
    names: dict[int, tuple[str, int]] = {}  # class id -> (breed name, species)
    for lineno, image, cid, species, _ in _lines(list_path):
        if image in listed:
            raise DataError(f"{list_path}:{lineno}: image {image} is listed twice")
        listed[image] = (cid, species)
        seen = names.setdefault(cid, (breed_name(image), species))
        if seen != (breed_name(image), species):
            raise DataError(f"{list_path}:{lineno}: CLASS-ID {cid} is {seen[0]} (species {seen[1]}) on an earlier "
                            f"line, but {image} (species {species}) here")
    if not names or sorted(names) != list(range(1, len(names) + 1)):
        raise DataError(f"{list_path}: CLASS-IDs must run 1..C without gaps, got {sorted(names)[:5]}... "
                        f"({len(names)} classes)")
    images, is_train = [], []
    for train, rel in ((True, TRAINVAL), (False, TEST)):
        path = root / rel
        for lineno, image, cid, species, _ in _lines(path):
            if listed.get(image, (cid, species)) != (cid, species) or image not in listed:
                raise DataError(f"{path}:{lineno}: {image} (CLASS-ID {cid}) "
                                + ("is not in list.txt" if image not in listed else
                                   f"has CLASS-ID {listed[image][0]} in list.txt"))
            images.append((image, rel))
            is_train.append(train)
    keys = [image for image, _ in images]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"{root / TEST}: image {twice} appears twice in trainval.txt/test.txt")
    pixels = np.stack([read_rgb(root / "images" / f"{image}.jpg", image_size, f"{root / rel}")
                       for image, rel in counted(images, "prepare oxford_pet: images read", len(images), "images")])
    order = sorted(names)
    raw = RawImages(pixels, np.asarray(is_train, dtype=bool),
                    {"breed": np.asarray([listed[k][0] - 1 for k in keys], dtype=np.int64),
                     "species": np.asarray([listed[k][1] - 1 for k in keys], dtype=np.int64)},
                    {"breed": [names[c][0] for c in order], "species": list(SPECIES)},
                    read_subclasses(root, keys))
    return check_labels(raw, root)


def write_pet(root: Path, raw: RawImages) -> None:
    """Pet's layout from ``raw`` (labellings ``breed`` and ``species``): images/<breed>_<n>.jpg, list.txt with its
    comment header, trainval.txt and test.txt; breed ids count within each species in class order."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cls, species, breeds = raw.labels["breed"], raw.labels["species"], raw.names["breed"]
    class_species = {int(c): int(s) for c, s in zip(cls, species)}
    breed_id = {c: 1 + sum(class_species.get(d) == class_species[c] for d in range(c)) for c in class_species}
    count = np.zeros(len(breeds), dtype=int)
    keys, rows = [], {True: [], False: []}
    for i in range(len(raw.images)):
        c = int(cls[i])
        count[c] += 1
        key = f"{breeds[c]}_{count[c]}"
        Image.fromarray(raw.images[i].transpose(1, 2, 0)).save(root / "images" / f"{key}.jpg", format="JPEG",
                                                               quality=95)
        keys.append(key)
        rows[bool(raw.is_train[i])].append(f"{key} {c + 1} {class_species[c] + 1} {breed_id[c]}\n")
    (root / LIST).write_text(LIST_HEADER + "".join(rows[True] + rows[False]))
    (root / TRAINVAL).write_text("".join(rows[True]))
    (root / TEST).write_text("".join(rows[False]))
    write_subclasses(root, keys, raw.subclass_labels)


PET_FORMAT = RawFormat(read_pet, write_pet, ("breed", "species"), "Oxford-IIIT Pet", EXPECTED)
