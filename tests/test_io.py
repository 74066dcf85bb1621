"""Atomic, byte-stable outputs."""
import torch

from pipeline.io import sha256_file, torch_load, torch_save


def test_torch_save_is_byte_stable_across_paths_and_runs(tmp_path):
    """The same state saved twice (each time through a different random temporary file) gives identical
    bytes, so DVC sees no change after an identical retrain; and it loads back with weights_only."""
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    torch_save(tmp_path / "a" / "model.pt", state)
    torch_save(tmp_path / "b" / "model.pt", state)
    assert sha256_file(tmp_path / "a" / "model.pt") == sha256_file(tmp_path / "b" / "model.pt")
    loaded = torch_load(tmp_path / "a" / "model.pt")
    assert torch.equal(loaded["w"], state["w"])
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary left behind
