"""Shared helpers: build validated params in memory and train small runs without DVC."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.datasets.shared.base import Dataset
from pipeline.config.params import default_params_yaml, parse_params
from pipeline.core.registry import DATASETS
from pipeline.engine.training import train_run

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist the workers share the cores: each takes its share of torch's intra-op threads (torch's own
# default, which follows OMP_NUM_THREADS), so that two workers on two cores do not oversubscribe them (the
# stages run by DVC tests take `threads` from params: 1).
torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests are skipped, with the reason in the report (``-rs``), when no GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def make_params(**overrides):
    return parse_params(overrides)


@dataclass
class Outcome:
    test_metrics: list[dict[str, float]]
    final_weights: np.ndarray  # [seeds, tasks]
    history: list[dict]


@functools.lru_cache(maxsize=None)
def _prepared(dataset: str) -> tuple:
    params = make_params(dataset=dataset)
    ds = DATASETS.get(dataset)(params.profile.model)
    folder = Path(tempfile.mkdtemp(prefix=f"prep_{dataset}_"))
    ds.prepare(params.dataset_config, folder)
    data = ds.load(folder)
    return ds, data, ds.make_splits(data, params.split)


@functools.lru_cache(maxsize=None)
def run_method(dataset: str, method: str, seeds: tuple[int, ...] = (0, 1, 2), overrides_json: str = "{}") -> Outcome:
    """Train ``method`` on the default ``dataset`` (cached per session so tests can share runs)."""
    params = make_params(dataset=dataset, method=method, seeds=list(seeds), **json.loads(overrides_json))
    ds, data, splits = _prepared(dataset)
    metrics, weights, histories = [], [], []
    for seed in seeds:
        res = train_run(ds, data, splits, params, seed, device=torch.device("cpu"))
        model = ds.build_model(data, params.profile.model)
        model.load_state_dict(res.model_state)
        metrics.append(ds.metrics(model, data, torch.as_tensor(splits["test"])))
        weights.append(res.history["weights"][-1])
        histories.append(res.history)
    return Outcome(metrics, np.asarray(weights), histories)


# The image stand-ins at a tenth of their size, for DVC tests that switch to one: they test the pipeline's
# behaviour, not the stand-ins' numbers.
SMALL_STANDINS = {
    "cifar10": {"standin_train_per_class": 100, "standin_test_per_class": 30},
    "cifar100": {"standin_train_per_class": 100, "standin_test_per_class": 30},
    "svhn": {"standin_train_per_class": 100, "standin_test_per_class": 30},
    "cub": {"standin_num_classes": 10, "standin_images_per_class": 12},
    "nyuv2": {"standin_train": 60, "standin_test": 20},
}


def small_default_params() -> dict:
    """The schema's defaults (whatever the workspace holds), with ``SMALL_STANDINS``."""
    params = yaml.safe_load(default_params_yaml())
    for name, prepare in SMALL_STANDINS.items():
        params["datasets"][name]["prepare"].update(prepare)
    return params


def copy_repository(dest: Path, params: dict | None = None) -> Path:
    """A git + DVC copy of this repository's tracked (and untracked, not ignored) files in ``dest``, committed,
    without dvc.lock; ``params`` (a mapping) replaces params.yaml when given."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    (dest / "dvc.lock").unlink(missing_ok=True)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory) -> Path:
    """A git + DVC copy of this repository, for tests that drive `dvc` itself (they edit its params)."""
    return copy_repository(tmp_path_factory.mktemp("repo"), small_default_params())


def solve_lower(direction, params, tol: float = 1e-10, iterations: int = 40) -> None:
    """Drive ``direction()`` (a lower gradient, or any lower update G(θ) built with create_graph) to zero by
    Newton's method on the flattened θ, with the full, possibly non-symmetric Jacobian (tiny problems only)."""
    for _ in range(iterations):
        flat = torch.cat([x.reshape(-1) for x in direction()])
        if float(flat.detach().norm()) < tol:
            return
        jac = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(gi, params, retain_graph=True)])
                           for gi in flat])
        step = torch.linalg.solve(jac, flat.detach())
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= step[offset: offset + p.numel()].view_as(p)
                offset += p.numel()
    raise AssertionError("the lower problem did not converge")


def check_against_finite_differences(phi, theta, solve, upper_value, analytic_grads, seed: int = 0,
                                     floor: float = 1e-5, abs_tol: float = 1e-8) -> None:
    """The hypergradient ``analytic_grads`` along two random directions u of φ against central differences of
    the upper value at the re-solved lower optimum (``solve()`` from θ*; φ and θ are restored afterwards); each
    difference must exceed ``floor`` in size, so that a zero gradient cannot pass."""
    g = torch.Generator().manual_seed(seed)
    start = [p.detach().clone() for p in phi]
    theta_star = [p.detach().clone() for p in theta]
    for _ in range(2):
        u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in phi]
        analytic = float(sum((a * b).sum() for a, b in zip(analytic_grads, u)))
        eps, values = 1e-5, []
        for sign in (1, -1):
            with torch.no_grad():
                for p, s0, ui in zip(phi, start, u):
                    p.copy_(s0 + sign * eps * ui)
                for p, t0 in zip(theta, theta_star):
                    p.copy_(t0)
            solve()
            values.append(upper_value())
        with torch.no_grad():
            for p, s0 in zip(phi, start):
                p.copy_(s0)
            for p, t0 in zip(theta, theta_star):
                p.copy_(t0)
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(numeric) > floor
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=abs_tol)


class FixedLogits(torch.nn.Module):
    """Returns rows of a fixed logit table in the order it is asked for them (whatever the pixels), with zeros for
    ``aux_outputs`` auxiliary outputs, and records its mode at each call."""

    def __init__(self, logits: torch.Tensor, aux_outputs: int) -> None:
        super().__init__()
        self.logits, self.aux_outputs, self.cursor, self.modes = logits, aux_outputs, 0, []

    def forward(self, x: torch.Tensor):
        self.modes.append(self.training)
        out = self.logits[self.cursor: self.cursor + len(x)]
        self.cursor += len(x)
        return out, torch.zeros(len(x), self.aux_outputs)


class InMemoryDataset(Dataset):
    """A test's hand-made dataset: its data are built in the test, so nothing is prepared, loaded or scored
    from files (subclasses give the losses and the model)."""

    def prepare(self, cfg, out_dir):
        raise NotImplementedError

    def load(self, folder):
        raise NotImplementedError

    def metrics(self, model, data, indices):
        raise NotImplementedError
