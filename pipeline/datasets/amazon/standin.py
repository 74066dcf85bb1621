"""The Amazon stand-in: a synthetic user-item-category review log with latent preferences, written as the 2014
release's files (``reviews_<Category>_5.json.gz``, JSON lines; ``meta_<Category>.json.gz``, Python-literal lines)
and read back by the real loader.

The latent score of user u for item i (of category c) is
    s = p_u · q_i + a_{u,c} + b_u + b_i + ε,   ε ~ N(0, standin_noise²),
p, q ~ N(0, 1/dim) vectors, a_{u,c} ~ N(0, standin_category_affinity²) the user's taste for the category, b the
user and item biases. Ratings 1-5 are the score's quantiles cut at Amazon-like shares (5%, 6%, 11%, 23%, 55%),
so the CTR auxiliary (rating > 3) is a coarsened primary label: helpful by construction (``prepare.ctr_flip``
makes it deliberately unhelpful, see ``aux_role``). Activity and popularity are skewed (log-normal); every item
has a release time, its reviews fall after it, so later periods hold new items (the cold start the chronological
split meets on real data). Deterministic from ``standin_seed``; nothing here is real Amazon data.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.amazon.config import Config
from pipeline.datasets.amazon.sources import CATEGORY_FILES, write_json_lines

STANDIN_DIR = "raw_standin"  # inside the prepared folder
RATING_SHARES = (0.05, 0.06, 0.11, 0.23, 0.55)  # of ratings 1..5 (roughly the 5-core files' shares)
START, SPAN_DAYS = 1_230_768_000, 5 * 365  # 2009-01-01, five years of reviews (day resolution, as the files)
ROOTS = {"toys": "Toys & Games", "movies": "Movies & TV"}


def aux_role(ctr_flip: float) -> str:
    """The CTR auxiliary's role in the stand-in: ``helpful`` while it carries the rating's information (flip
    < 0.5), ``irrelevant`` at 0.5 (a coin flip, independent of everything)."""
    return "irrelevant" if ctr_flip >= 0.5 else "helpful"


def generate(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(review rows, metadata rows) in the 2014 files' field names; reviews in time order."""
    rng = np.random.default_rng(cfg.standin_seed)
    nu, ni, nc, d = cfg.standin_users, cfg.standin_items, cfg.standin_categories, cfg.standin_dim
    p = rng.normal(0, 1 / np.sqrt(d), (nu, d))
    q = rng.normal(0, 1 / np.sqrt(d), (ni, d))
    affinity = rng.normal(0, cfg.standin_category_affinity, (nu, nc))
    b_user, b_item = rng.normal(0, 0.3, nu), rng.normal(0, 0.3, ni)
    category = rng.integers(0, nc, ni)
    activity, popularity = rng.lognormal(0, 0.8, nu), rng.lognormal(0, 0.8, ni)
    weights = np.outer(activity / activity.sum(), popularity / popularity.sum()).ravel()
    pairs = rng.choice(nu * ni, size=cfg.standin_reviews, replace=False, p=weights)
    users, items = pairs // ni, pairs % ni
    score = ((p[users] * q[items]).sum(1) + affinity[users, category[items]] + b_user[users] + b_item[items]
             + rng.normal(0, cfg.standin_noise, len(pairs)))
    cuts = np.quantile(score, np.cumsum(RATING_SHARES)[:-1])
    ratings = 1 + np.searchsorted(cuts, score)
    release = rng.uniform(0, 0.85, ni)  # share of the span after which the item can be reviewed
    days = np.floor((release[items] + rng.random(len(pairs)) * (1 - release[items])) * SPAN_DAYS).astype(np.int64)
    order = np.argsort(days, kind="stable")
    reviews = []
    for k in order:
        t = START + int(days[k]) * 86_400
        reviews.append({
            "reviewerID": f"AU{users[k]:08d}", "asin": f"B{items[k]:09d}", "reviewerName": f"user {users[k]}",
            "helpful": [0, 0], "reviewText": "", "overall": float(ratings[k]), "summary": "",
            "unixReviewTime": t, "reviewTime": dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%m %d, %Y")})
    root = ROOTS[cfg.subset]
    meta = [{"asin": f"B{i:09d}", "title": f"item {i}", "categories": [[root, f"{root} category {category[i]}"]]}
            for i in range(ni)]
    return reviews, meta


def write_standin(folder: Path, cfg: Config) -> tuple[Path, Path]:
    """Write the stand-in's two files into ``folder``; returns (reviews file, metadata file)."""
    reviews, meta = generate(cfg)
    cat = CATEGORY_FILES[cfg.subset]
    review_file, meta_file = folder / f"reviews_{cat}_5.json.gz", folder / f"meta_{cat}.json.gz"
    write_json_lines(review_file, reviews)
    write_json_lines(meta_file, meta, python_literals=True)
    return review_file, meta_file
