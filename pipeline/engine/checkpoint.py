"""Resumable checkpoints of one training run (one seed): a killed run continues where it stopped, bit for bit.

A checkpoint is one file, written atomically (``pipeline.core.io.torch_save``) every ``train.checkpoint_every``
steps and when the stage receives SIGTERM/SIGINT (at the end of the step in progress), holding everything the
rest of the run depends on: W, the method's state (its modules' ``state_dict`` and ``role_state``: optimisers,
generators and plain values of its roles), W's optimiser, scheduler and gradient scaler, every random state
(torch's global CPU and CUDA generators, numpy's, Python's, and the generator of each batch stream role), each
stream's position in its epoch, the step, the history and the live logs so far, the best model, and the
fingerprint of what the run depends on. Everything is tensors and plain lists/dicts/numbers, so it loads
with ``torch.load(weights_only=True)``.

A checkpoint whose fingerprint differs from the run's (params, code, splits, data) is refused with one message
naming the file and the differing entries; it is never silently reused. A finished seed's checkpoint is
superseded by its result (``done``): the stage then skips the seed; its final swap of models/ removes them all.

Where: ``models/checkpoints/seed_<s>.pt`` for the stage (models/ is ``persist: true``, so a failed stage keeps
them). One writer: a distributed run lets rank 0 write (``Checkpointer(writer=False)`` elsewhere) and every
rank read.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from pipeline.core.io import torch_load, torch_save
from pipeline.core.paths import MODELS
from pipeline.core.registry import METHODS

CHECKPOINTS = MODELS / "checkpoints"
FORMAT = 1
# train keys that change no result: a run may resume under another value
NEUTRAL_TRAIN_KEYS = ("checkpoint_every",)


def checkpoint_path(seed: int, folder: Path | str = CHECKPOINTS) -> Path:
    return Path(folder) / f"seed_{seed}.pt"


# ------------------------------------------------------------------------------------------ the fingerprint


def code_digest(roots: Iterable[Path] | None = None) -> str:
    """sha256 of the training code's sources (the ``pipeline`` package and ``stages/train.py``), by path."""
    package = Path(__file__).resolve().parent
    roots = list(roots) if roots is not None else [package, package.parent / "stages" / "train.py"]
    digest = hashlib.sha256()
    for root in roots:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root] if root.is_file() else []
        for path in files:
            digest.update(path.relative_to(package.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    value = _plain(value)
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True)


def fingerprint(params: Any, seed: int, splits: dict[str, np.ndarray], extra: dict[str, str] | None = None
                ) -> dict[str, str]:
    """What a run's result depends on, one entry per params key (as ``datasets.<d>.train.lr``), plus the code,
    the splits and ``extra`` (e.g. the prepared data's manifest hash)."""
    out: dict[str, str] = {}
    name = params.dataset
    for key in ("method", "dataset", "device", "threads"):
        _flatten(key, getattr(params, key), out)
    out["seed"] = str(seed)
    _flatten(f"datasets.{name}.model", params.profile.model, out)
    train = {k: v for k, v in _plain(params.train).items() if k not in NEUTRAL_TRAIN_KEYS}
    _flatten(f"datasets.{name}.train", train, out)
    spec = METHODS.get(params.method)
    sections = ([spec.config_section] if spec.config_section else []) + (["bilevel"] if spec.uses_bilevel else [])
    for section in sections:
        _flatten(f"methods.{section}", params.method_config(section), out)
    digest = hashlib.sha256()
    for key in sorted(splits):
        digest.update(key.encode() + b"\0" + np.ascontiguousarray(splits[key], dtype=np.int64).tobytes())
    out["splits"] = digest.hexdigest()
    out["code"] = code_digest()
    out.update(extra or {})
    return out


def differences(saved: dict[str, str], current: dict[str, str], limit: int = 6) -> str:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    shown = [f"{k}: {saved.get(k, '(absent)')} -> {current.get(k, '(absent)')}" if k not in ("code", "splits")
             else f"{k} changed" for k in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


# ------------------------------------------------------------------------------------------ random states


def rng_state(streams: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a run draws from: torch (CPU, and each CUDA device once initialised), numpy's and
    Python's global generators, and each batch stream role's generator."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
             else [],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
             "streams": {role: g.get_state() for role, g in streams.items()}}
    return state


def set_rng_state(state: dict[str, Any], streams: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    for role, g in streams.items():
        g.set_state(state["streams"][role])


# ------------------------------------------------------------------------- the state of a method's roles

# attributes every nn.Module has: its parameters, buffers and submodules are saved by ``state_dict``
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"_compiled_call_impl"}
_PRIMITIVE = (int, float, bool, str, type(None))


def _ours(value: Any) -> bool:
    return type(value).__module__.startswith("pipeline.")


def _attributes(obj: Any) -> Iterable[tuple[str, Any]]:
    """A project object's attributes; of torch's own modules only their submodules (their state is in
    ``state_dict``, their other attributes are constants of their construction)."""
    if isinstance(obj, nn.Module):
        if _ours(obj):
            yield from ((k, v) for k, v in vars(obj).items() if k not in _MODULE_INTERNALS)
        yield from obj._modules.items()
    else:
        yield from vars(obj).items()


def _is_role_object(value: Any) -> bool:
    """Objects of this project held by a role (an outer update's ``HyperOptimizer``), walked like the roles."""
    return hasattr(value, "__dict__") and _ours(value) and not callable(value) and not isinstance(value, BaseModel)


def role_state(obj: Any, seen: set[int] | None = None) -> dict[str, Any]:
    """The state of a method's roles that ``state_dict`` does not hold: optimisers (their ``state_dict``),
    random generators, and plain values (numbers, strings, tensors that are not parameters, lists of them) of
    the roles and the objects of this project they hold. Parameters, configs and callables are skipped."""
    seen = set() if seen is None else seen
    seen.add(id(obj))
    out: dict[str, Any] = {}
    for name, value in _attributes(obj):
        if isinstance(value, torch.optim.Optimizer):
            out[name] = {"optimizer": value.state_dict()}
        elif isinstance(value, torch.Generator):
            out[name] = {"generator": value.get_state()}
        elif isinstance(value, nn.Parameter):
            continue
        elif isinstance(value, Tensor):
            out[name] = {"tensor": value.detach().cpu().clone()}
        elif isinstance(value, _PRIMITIVE):
            out[name] = {"value": value}
        elif isinstance(value, (list, tuple)) and all(isinstance(v, Tensor) and not isinstance(v, nn.Parameter)
                                                      for v in value) and value:
            out[name] = {"tensors": [v.detach().cpu().clone() for v in value], "tuple": isinstance(value, tuple)}
        elif isinstance(value, (list, tuple)) and all(isinstance(v, _PRIMITIVE) for v in value):
            out[name] = {"values": list(value), "tuple": isinstance(value, tuple)}
        elif (isinstance(value, nn.Module) or _is_role_object(value)) and id(value) not in seen:
            inner = role_state(value, seen)
            if inner:
                out[name] = {"object": inner}
    return out


def load_role_state(obj: Any, state: dict[str, Any], device: torch.device, where: str,
                    seen: set[int] | None = None) -> None:
    """Put ``role_state``'s values back into ``obj`` (built afresh from the same params)."""
    seen = set() if seen is None else seen
    seen.add(id(obj))
    current = dict(_attributes(obj))
    for name, saved in state.items():
        if name not in current:
            raise ValueError(f"{where}: the checkpoint holds {name!r}, which the method has not")
        value = current[name]
        if "optimizer" in saved:
            value.load_state_dict(saved["optimizer"])
        elif "generator" in saved:
            value.set_state(saved["generator"])
        elif "tensor" in saved:
            setattr(obj, name, saved["tensor"].to(value.device if isinstance(value, Tensor) else device))
        elif "value" in saved:
            setattr(obj, name, saved["value"])
        elif "tensors" in saved:
            items = [t.to(device) for t in saved["tensors"]]
            setattr(obj, name, tuple(items) if saved["tuple"] else items)
        elif "values" in saved:
            setattr(obj, name, tuple(saved["values"]) if saved["tuple"] else list(saved["values"]))
        elif "object" in saved:
            load_role_state(value, saved["object"], device, f"{where}.{name}", seen)


# ------------------------------------------------------------------------------------------- the files


class Checkpointer:
    """One seed's checkpoint file: ``load`` (refusing another run's), ``save``. ``every``: steps between
    checkpoints (0: none, and none on a signal either). ``writer``: whether this process writes (rank 0)."""

    def __init__(self, path: Path | str, every: int, fingerprint: dict[str, str], writer: bool = True) -> None:
        self.path = Path(path)
        self.every = every
        self.fingerprint = dict(fingerprint)
        self.writer = writer

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def load(self) -> dict[str, Any] | None:
        """The checkpoint of this run, or None when there is none (or checkpoints are off)."""
        if not self.enabled or not self.path.is_file():
            return None
        try:
            state = torch_load(self.path)
        except Exception as err:  # noqa: BLE001 - torch, pickle and zip each raise their own kinds
            raise ValueError(f"{self.path} is not a readable checkpoint ({type(err).__name__}: {err}); remove it "
                             "to train this seed from the start") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a checkpoint of this version (format {FORMAT}); remove it to "
                             "train this seed from the start")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"{self.path} was written by a run with other settings ("
                             f"{differences(state['fingerprint'], self.fingerprint)}): it is not resumed; remove "
                             "it to train this seed from the start, or restore those settings to resume it")
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.writer:
            torch_save(self.path, {"format": FORMAT, "fingerprint": self.fingerprint, **state})
