"""Synthetic datasets: generation follows the paper's definitions; the loader names a malformed file."""
import numpy as np
import pytest

from pipeline.config.params import ParamsError, parse_params
from pipeline.datasets.shared.base import DataError
from pipeline.core.registry import DATASETS
from pipeline.core.io import save_npz, verify_manifest, write_manifest


def prepare(name, tmp_path, **prepare_overrides):
    params = parse_params({"datasets": {name: {"prepare": prepare_overrides}}})
    ds = DATASETS.get(name)()
    ds.prepare(getattr(params.datasets, name).prepare, tmp_path)
    return ds, ds.load(tmp_path)


def test_toy2d_follows_its_definition(tmp_path):
    _, data = prepare("toy2d", tmp_path, num_samples=20000)
    x, y = data.inputs.double().numpy(), data.targets.double().numpy()
    w_star, w_harm = np.array([1.0, 1.0]), np.array([2.0, -4.0])
    assert data.task_names == ["main", "helpful", "harmful"]
    assert np.std(y[:, 0] - x @ w_star) == pytest.approx(3.0, rel=0.03)
    assert np.std(y[:, 1] - x @ w_star) == pytest.approx(1.0, rel=0.03)
    assert np.std(y[:, 2] - x @ w_harm) == pytest.approx(1.0, rel=0.03)


def test_noisy_aux_noise_grows_with_index(tmp_path):
    _, data = prepare("noisy_aux", tmp_path, num_samples=5000, num_aux=10, sigma_aux=0.5)
    x, y = data.inputs.double().numpy(), data.targets.double().numpy()
    resid = y[:, 1:] - (x @ np.asarray(data.meta["w_main"]))[:, None]
    assert (resid >= -1e-4).all()  # |ε_j|: the noise is one-sided
    # E|ε_j| = σ·sqrt(2j/π) for ε_j ~ N(0, j σ²)
    expected = 0.5 * np.sqrt(2 * np.arange(1, 11) / np.pi)
    assert np.allclose(resid.mean(0), expected, rtol=0.06)


def test_same_seed_same_files(tmp_path):
    prepare("toy2d", tmp_path / "a")
    prepare("toy2d", tmp_path / "b")
    assert write_manifest(tmp_path / "a") == write_manifest(tmp_path / "b")
    verify_manifest(tmp_path / "a")


def test_loader_names_missing_and_malformed_files(tmp_path):
    ds = DATASETS.get("toy2d")()
    with pytest.raises(DataError, match="data.npz is missing"):
        ds.load(tmp_path)
    prepare("toy2d", tmp_path)
    save_npz(tmp_path / "data.npz", x=np.zeros((5, 2)), y=np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"data.npz: expected arrays x \[N, d\] and y"):
        ds.load(tmp_path)
    (tmp_path / "data.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not readable"):
        ds.load(tmp_path)


def test_toy2d_refuses_sigma_main_not_above_sigma_aux(tmp_path):
    with pytest.raises(ParamsError, match="datasets.toy2d.prepare: sigma_main must be larger"):
        prepare("toy2d", tmp_path, sigma_main=0.5, sigma_aux=1.0)
