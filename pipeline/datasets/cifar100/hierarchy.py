"""The 4-level CIFAR-100 hierarchy of MAXL (Liu et al., NeurIPS 2019, §4.1 and Appendix A, Table 2): 3, 10, 20
and 100 classes, coarsest first. The 20 superclasses (``coarse``) and the 100 classes (``fine``) are CIFAR-100's
own labels (the pickles' ``coarse_labels``/``fine_labels``); the 10-class (``group``) and 3-class (``domain``)
levels group the 20 superclasses as the MAXL authors do.

Source of the two coarser levels: the authors' public code, github.com/lorenmt/maxl, ``create_dataset.py`` (its
dictionaries from the 20 superclasses to 10 classes and from those to 3), written here as data; they agree with
the paper's Table 2 (e.g. large animals = reptiles, large carnivores, large omnivores and herbivores).

The stand-in (``source: standin``) has the same four levels in the same files: ``fine`` = its shapes, ``coarse``
= shape // 2 (the existing stand-in superclasses), and two coarser levels that halve again (``group`` = coarse
// 2, ``domain`` = group // 2): 2, 3, 5 and 10 classes with the default 10 shapes.
"""
from __future__ import annotations

import numpy as np

from pipeline.datasets.shared.base import DataError
from pipeline.datasets.shared.raw_images import RawImages

LEVELS = ("domain", "group", "coarse", "fine")  # coarsest first; CIFAR-100: 3, 10, 20, 100 classes
REAL_COUNTS = {"domain": 3, "group": 10, "coarse": 20, "fine": 100}

# CIFAR-100 superclass index (the pickles' alphabetical coarse_label_names order) -> MAXL's 10-class level.
COARSE_TO_GROUP = (1, 2, 5, 6, 5, 6, 6, 3, 0, 7, 8, 0, 1, 3, 4, 0, 2, 5, 9, 9)
GROUP_NAMES = ("large animals", "medium animals", "small animals", "invertebrates", "people", "vegetations",
               "household objects", "construction", "natural scenes", "vehicles")
# MAXL's 10-class level -> its 3-class level.
GROUP_TO_DOMAIN = (0, 0, 0, 0, 0, 1, 2, 2, 2, 2)
DOMAIN_NAMES = ("animals", "vegetations", "objects and scenes")


def standin_counts(num_classes: int) -> dict[str, int]:
    """Classes per level of a stand-in with ``num_classes`` shapes (each level halves the next finer, rounding up)."""
    counts = {"fine": num_classes}
    for finer, coarser in zip(LEVELS[:0:-1], LEVELS[-2::-1]):
        counts[coarser] = (counts[finer] + 1) // 2
    return counts


def level_counts(standin: bool, num_classes: int) -> dict[str, int]:
    """Classes per level, known from the settings alone (before any data)."""
    return standin_counts(num_classes) if standin else dict(REAL_COUNTS)


def with_levels(raw: RawImages, standin: bool, where: str) -> RawImages:
    """``raw`` (fine and coarse read from the pickles) with the two coarser levels added.

    Real data: MAXL's mapping of the 20 superclasses, so the files must have 20 (a DataError naming ``where``
    otherwise). Stand-in: each level halves the next finer one."""
    coarse = raw.labels["coarse"]
    labels, names = dict(raw.labels), dict(raw.names)
    if standin:
        group = coarse // 2
        labels["group"], labels["domain"] = group, group // 2
        count = standin_counts(len(raw.names["fine"]))
        names["group"] = [f"group {k}" for k in range(count["group"])]
        names["domain"] = [f"domain {k}" for k in range(count["domain"])]
    else:
        if len(raw.names["coarse"]) != len(COARSE_TO_GROUP):
            raise DataError(f"{where}: MAXL's 4-level hierarchy needs CIFAR-100's {len(COARSE_TO_GROUP)} superclasses "
                            f"(coarse_label_names), found {len(raw.names['coarse'])}")
        labels["group"] = np.asarray(COARSE_TO_GROUP, dtype=np.int64)[coarse]
        labels["domain"] = np.asarray(GROUP_TO_DOMAIN, dtype=np.int64)[labels["group"]]
        names["group"], names["domain"] = list(GROUP_NAMES), list(DOMAIN_NAMES)
    return RawImages(raw.images, raw.is_train, labels, names, raw.subclass_labels)


def finer_level(primary: str, auxiliary: str | None) -> str | None:
    """The auxiliary level: ``auxiliary`` if given, else the level just finer than ``primary`` (None for fine)."""
    if auxiliary is not None:
        return auxiliary
    i = LEVELS.index(primary)
    return LEVELS[i + 1] if i + 1 < len(LEVELS) else None
