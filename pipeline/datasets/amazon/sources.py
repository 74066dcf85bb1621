"""The public Amazon review data as users have it (McAuley et al.'s 2014 and Ni et al.'s 2018 releases): one
reviews file and one item-metadata file per category, JSON lines, plain or gzip'd.

- reviews, one object per line: ``reviewerID`` (user), ``asin`` (item), ``overall`` (the rating, 1-5),
  ``unixReviewTime`` (seconds), plus fields read by nobody here (``reviewerName``, ``reviewText``, ``summary``,
  ``helpful``/``vote``, ``reviewTime``, ``verified``, ``style``...).
- metadata, one object per line: ``asin`` and the category paths, ``categories`` (2014: a list of paths, e.g.
  ``[["Toys & Games", "Games", "Board Games"]]``) or ``category`` (2018: one path as a list). The 2014 metadata
  lines are Python literals (single quotes), not JSON: a line that is not JSON is read with
  ``ast.literal_eval`` (literals only, nothing is executed).

A bad line (not an object, a missing or ill-typed field) is a ``DataError`` naming the file and the line.
"""
from __future__ import annotations

import ast
import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipeline.datasets.shared.base import DataError

# The category's name in the public files, per ``prepare.subset``.
CATEGORY_FILES = {"toys": "Toys_and_Games", "movies": "Movies_and_TV"}
GZIP_MAGIC = b"\x1f\x8b"


def review_candidates(subset: str) -> list[str]:
    """The reviews file names the releases use, most specific first: the 5-core files (what the paper's counts
    match: 167,597 Toys and 1,697,533 Movies reviews), then the full ones; 2014 names, then 2018's."""
    cat = CATEGORY_FILES[subset]
    names = [f"reviews_{cat}_5.json", f"{cat}_5.json", f"reviews_{cat}.json", f"{cat}.json"]
    return [n + ext for n in names for ext in (".gz", "")]


def metadata_candidates(subset: str) -> list[str]:
    cat = CATEGORY_FILES[subset]
    return [f"meta_{cat}.json.gz", f"meta_{cat}.json"]


def expected_files(subset: str) -> str:
    """What ``root`` must hold, for messages."""
    return (f"a reviews file ({' or '.join(review_candidates(subset)[:4])}, ...) and the metadata file "
            f"({metadata_candidates(subset)[0]} or {metadata_candidates(subset)[1]})")


def find_file(root: Path, given: str | None, candidates: list[str], key: str, what: str) -> Path:
    """``root / given`` if named (it must exist), else the first candidate present; ``DataError`` naming the key."""
    if given:
        path = root / given
        if not path.is_file():
            raise DataError(f"datasets.amazon.prepare.{key} = {given}: {path} is not a file")
        return path
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} holds no {what} file: expected one of {', '.join(candidates)} "
                    f"(or name yours with datasets.amazon.prepare.{key})")


def _open_text(path: Path) -> Any:
    """A text handle on ``path``, gunzipped when it starts with gzip's magic bytes (whatever its name)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rt", encoding="utf-8") if magic == GZIP_MAGIC else open(path, encoding="utf-8")


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; JSON, else a Python literal (the 2014 metadata)."""
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as err:
                    try:
                        obj = ast.literal_eval(text)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        raise DataError(f"{path}:{lineno}: not a JSON object ({err.args[0]})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected an object, got {type(obj).__name__}")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as err:  # a truncated or corrupt .gz, a non-UTF-8 file
        raise DataError(f"{path}: not readable as (gzip'd) UTF-8 JSON lines: {err}") from None


def _field(path: Path, lineno: int, obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise DataError(f"{path}:{lineno}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DataError(f"{path}:{lineno}: field {key!r} = {value!r} is not a {getattr(kind, '__name__', kind)}")
    return value


@dataclass
class ReviewLog:
    """Reviews in file order, and each reviewed item's category (None: no metadata or no category path)."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ratings: list[float] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    categories: dict[str, str | None] = field(default_factory=dict)  # asin -> category
    files: tuple[str, str] = ("", "")  # the reviews and metadata files read


def read_reviews(path: Path, log: ReviewLog) -> None:
    """Append every review of ``path`` to ``log``; ratings must lie in [0, 5], times be integers."""
    for lineno, obj in json_lines(path):
        user = _field(path, lineno, obj, "reviewerID", str)
        item = _field(path, lineno, obj, "asin", str)
        rating = float(_field(path, lineno, obj, "overall", (int, float)))
        time = _field(path, lineno, obj, "unixReviewTime", int)
        if not (math.isfinite(rating) and 0 <= rating <= 5):
            raise DataError(f"{path}:{lineno}: overall = {rating} is not a rating in [0, 5]")
        log.users.append(user)
        log.items.append(item)
        log.ratings.append(rating)
        log.times.append(time)
    if not log.users:
        raise DataError(f"{path}: no review in the file")


def category_of(path: Path, lineno: int, obj: dict[str, Any], level: int) -> str | None:
    """The ``level``-th entry of the item's first category path (its last entry when shorter), or None."""
    if "categories" in obj:  # 2014: a list of paths
        paths = obj["categories"]
        if not isinstance(paths, list) or not all(isinstance(p, list) for p in paths):
            raise DataError(f"{path}:{lineno}: 'categories' must be a list of category paths (lists)")
        first = paths[0] if paths else []
    elif "category" in obj:  # 2018: one path
        first = obj["category"]
        if not isinstance(first, list):
            raise DataError(f"{path}:{lineno}: 'category' must be a list (a category path)")
    else:
        return None
    names = [str(c).strip() for c in first if str(c).strip()]
    if not names:
        return None
    return names[min(level, len(names) - 1)]


def read_metadata(path: Path, log: ReviewLog, level: int) -> None:
    """The category of every reviewed item (the first line of an asin wins; 2018 repeats some); items without a
    metadata line stay unknown."""
    wanted = set(log.items)
    for lineno, obj in json_lines(path):
        asin = _field(path, lineno, obj, "asin", str)
        if asin in wanted and asin not in log.categories:
            log.categories[asin] = category_of(path, lineno, obj, level)


def read_review_log(reviews: Path, metadata: Path, category_level: int) -> ReviewLog:
    log = ReviewLog(files=(reviews.name, metadata.name))
    read_reviews(reviews, log)
    read_metadata(metadata, log, category_level)
    return log


def _open_write(path: Path) -> Any:
    """A text handle writing ``path``, gzip'd (no name or time in the header: same content, same bytes) for .gz."""
    if path.suffix == ".gz":
        return gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), mtime=0)
    return open(path, "wb")


def write_json_lines(path: Path, rows: list[dict[str, Any]], python_literals: bool = False) -> None:
    """One object per line, as JSON or (the 2014 metadata's form) as Python literals; gzip'd when ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = _open_write(path)
    try:
        for row in rows:
            fh.write(((repr(row) if python_literals else json.dumps(row)) + "\n").encode("utf-8"))
    finally:
        inner = getattr(fh, "fileobj", None)
        fh.close()
        if inner is not None:
            inner.close()
