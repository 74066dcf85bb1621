"""Atomic writes, content hashes and manifests: nothing half-written is ever left where a reader looks."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``target`` whole, on failure ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        yield tmp
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Load arrays only: pickled objects are refused."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def torch_save(path: Path | str, obj: Any) -> None:
    """Byte-stable: the same object gives the same file (saving to a path would record the random temporary
    name inside the archive, so DVC would see every retrain as a change)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def torch_load(path: Path | str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path | str) -> dict[str, str]:
    """Hash every file below ``folder`` (but the manifest itself) into ``folder/manifest.json``."""
    folder = Path(folder)
    hashes = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    write_json(folder / MANIFEST, {"files": hashes})
    return hashes


def verify_manifest(folder: Path | str) -> None:
    """Raise ``FileNotFoundError``/``ValueError`` naming the first missing or changed file."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is missing: run the prepare stage first (`dvc repro`)")
    for rel, expected in json.loads(manifest.read_text())["files"].items():
        path = folder / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} listed in {manifest} is missing")
        if sha256_file(path) != expected:
            raise ValueError(f"{path} does not match its hash in {manifest}: the prepared data was modified")
