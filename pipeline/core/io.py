"""Atomic writes, content hashes and manifests: nothing half-written is ever left where a reader looks.

Temporaries are named ``.<target>.<pid>-<random>.tmp`` beside their target, so the next write of the same
target (or :func:`recover`, which every stage calls at start) recognises and removes those of a process that
no longer runs (killed with SIGKILL, or a power cut). A folder replaces its previous version by one atomic
exchange (Linux ``renameat2(RENAME_EXCHANGE)``), so the last good version is in place at every instant;
where the file system cannot exchange, two renames are used, and :func:`recover` puts ``.<target>.old`` back
if a failure between them left ``<target>`` missing. A stage interrupted by SIGTERM/SIGINT raises
:class:`Interrupted` (see ``pipeline.config.stage``), so the ``finally`` blocks below remove the temporaries; the
swap itself is a critical section, during which such a signal is held until the swap has completed.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

MANIFEST = "manifest.json"


TMP_SUFFIX = ".tmp"
_LEGACY_RANDOM = re.compile(r"[a-z0-9_]{8}")  # tempfile's names before temporaries carried their pid


class Interrupted(BaseException):
    """Raised in the main thread when a stage receives SIGTERM or SIGINT (not an ``Exception``, so no
    ``except Exception`` swallows it on its way out through the ``finally`` blocks that clean up)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}"


_critical = {"depth": 0, "pending": None, "stopping": False}


def interrupt_handler(signum: int, frame: Any) -> None:
    """Signal handler (installed by ``pipeline.config.stage.stage``): raise :class:`Interrupted`, or hold the signal
    until the current critical section ends. A second signal while the first unwinds is ignored, so the
    cleanup it triggered is not itself cut short."""
    if _critical["stopping"]:
        return
    if _critical["depth"]:
        _critical["pending"] = signum
        return
    _critical["stopping"] = True
    raise Interrupted(signum)


def reset_interrupts() -> None:
    _critical.update(depth=0, pending=None, stopping=False)


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """Hold SIGTERM/SIGINT (when :func:`interrupt_handler` is installed) until the block has finished."""
    _critical["depth"] += 1
    try:
        yield
    finally:
        _critical["depth"] -= 1
        if not _critical["depth"] and _critical["pending"] is not None:
            signum, _critical["pending"] = _critical["pending"], None
            _critical["stopping"] = True
            raise Interrupted(signum)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back: there is no getter before Python 3.13's)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give: 0666 (files) or 0777 (folders) less the umask.
    ``tempfile`` creates 0600 files and 0700 folders, so every temporary is given this mode before it
    replaces its target (a figure written 0600 would be unreadable to the group and a web server)."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale_temporary(path: Path, target_name: str) -> bool:
    """Whether ``path`` is a temporary of ``target_name`` left by a process that no longer runs."""
    prefix = f".{target_name}."
    name = path.name
    if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
        return False
    middle = name[len(prefix):-len(TMP_SUFFIX)]
    pid, sep, rand = middle.partition("-")
    if sep and pid.isdigit() and rand and "." not in rand:
        return not _pid_running(int(pid))
    return bool(_LEGACY_RANDOM.fullmatch(middle))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def old_copy(target: Path | str) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def recover(target: Path | str) -> list[str]:
    """Undo what an interrupted write of ``target`` left: remove its stale temporaries, put the last good
    folder back from ``.<target>.old`` if a failure between the two renames of a swap left ``target``
    missing, or remove ``.<target>.old`` once ``target`` is in place. Returns what was done, one line each."""
    target = Path(target)
    done: list[str] = []
    parent = target.parent
    if not parent.is_dir():
        return done
    for entry in parent.iterdir():
        if is_stale_temporary(entry, target.name):
            _remove(entry)
            done.append(f"removed the stale temporary {entry}")
    old = old_copy(target)
    if old.is_dir():
        if not target.exists():
            os.rename(old, target)
            done.append(f"restored {target} from {old}")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old}")
    return done


def check_writable(target: Path | str) -> None:
    """Raise ``PermissionError`` naming the folder unless ``target``'s parent (where the temporary and the
    swap happen) and, if ``target`` is a folder, it and every folder below it (whose files the swap
    removes) accept a new file. Probed by creating one, so read-only mounts and immutable folders count."""
    target = Path(target)
    folders = [target.parent if str(target.parent) else Path(".")]
    if target.is_dir():
        folders += [target] + [Path(root) / d for root, dirs, _ in os.walk(target) for d in dirs]
    for folder in folders:
        try:
            fd, probe = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=TMP_SUFFIX, dir=folder)
        except FileNotFoundError:
            continue  # created on demand
        except OSError as err:
            shown = folder if str(folder) != "." else f"the current folder {Path.cwd()}"
            raise PermissionError(f"{shown} is not writable ({err.strerror}): {target} cannot be written; "
                                  "fix its permissions (or mount) and run again") from None
        os.close(fd)
        os.unlink(probe)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=TMP_SUFFIX, dir=target.parent)
    try:
        os.fchmod(fd, default_mode())  # not mkstemp's 0600: what open() would have made, umask respected
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (``renameat2(RENAME_EXCHANGE)``). False where the platform or file
    system cannot; raises ``OSError`` for any other failure."""
    global _renameat2
    if _renameat2 is None:
        libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
        _renameat2 = getattr(libc, "renameat2", False) if libc is not None else False
        if _renameat2:
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2.restype = ctypes.c_int
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _two_renames(tmp: Path, target: Path) -> None:
    """The fallback swap: ``target`` -> ``.target.old``, ``tmp`` -> ``target``. A failure between the two
    leaves ``target`` missing; :func:`recover` (at the next start) puts ``.target.old`` back."""
    old = old_copy(target)
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def swap_into_place(tmp: Path, target: Path) -> None:
    """Make the complete folder ``tmp`` become ``target``; afterwards ``tmp`` holds the previous version."""
    with critical_section():
        if not target.exists():
            os.rename(tmp, target)
        elif not exchange(tmp, target):
            _two_renames(tmp, target)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``target`` whole, on failure ``target`` is untouched.

    Before anything is written, what an earlier interrupted write left is cleaned up (:func:`recover`) and
    the folders are checked writable (:func:`check_writable`), so a read-only output fails before the work."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    check_writable(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=TMP_SUFFIX, dir=target.parent))
    try:
        tmp.chmod(default_mode(folder=True))  # not mkdtemp's 0700
        yield tmp
        swap_into_place(tmp, target)
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


REAL_KINDS = frozenset("biuf")  # numpy dtype kinds of bool, signed and unsigned integers, floats


def check_real(path: Path | str, name: str, array: np.ndarray) -> np.ndarray:
    """Raise ``ValueError`` naming the file unless ``array`` holds real numbers (or booleans): a complex
    array would lose its imaginary part silently when converted, strings and records are not data."""
    if array.dtype.kind not in REAL_KINDS:
        where = f"{path}" if not name else f"{path}: array {name!r}"
        raise ValueError(f"{where} has dtype {array.dtype}; only real numbers are accepted "
                         "(complex, string and record arrays are refused)")
    return array


def load_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Load arrays only: pickled objects are refused, and so are non-real dtypes (naming the file and array)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: check_real(path, k, npz[k]) for k in npz.files}


def load_npy(path: Path | str, mmap_mode: Any = None) -> np.ndarray:
    """One ``.npy`` array, with the checks of :func:`load_npz`."""
    return check_real(path, "", np.load(path, mmap_mode=mmap_mode, allow_pickle=False))


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
