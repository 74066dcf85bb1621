"""DAE and RS, the hand-designed point-cloud auxiliaries: the corruptions and the method's checks."""
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.methods.base import build_method
from pipeline.methods.generators.reconstruction import jitter, shuffle_regions
from tests.conftest import _prepared


def test_shuffle_regions_moves_whole_voxels_to_a_permutation_of_voxels():
    torch.manual_seed(0)
    points = torch.rand(2, 3, 500) * 2 - 1
    moved = shuffle_regions(points, grid=3)
    lo = points.amin(2, keepdim=True)
    size = (points.amax(2, keepdim=True) - lo).amax(1, keepdim=True) / 3
    shift = (moved - points) / size
    assert torch.allclose(shift, shift.round(), atol=1e-4)  # whole-voxel translations
    cell = ((points - lo) / size).floor().clamp(0, 2).long()
    cell_id = (cell[:, 0] * 3 + cell[:, 1]) * 3 + cell[:, 2]
    for b in range(2):
        for c in cell_id[b].unique():
            inside = shift[b][:, cell_id[b] == c].round()
            assert torch.equal(inside, inside[:, :1].expand_as(inside))  # a region moves rigidly
        new_cell = cell_id[b] + (shift[b].round().long() * torch.tensor([9, 3, 1])[:, None]).sum(0)
        occupied = cell_id[b].unique()
        # distinct regions land in distinct voxels, inside the cube
        assert len(torch.stack([new_cell[cell_id[b] == c][0] for c in occupied]).unique()) == len(occupied)
        assert new_cell.min() >= 0 and new_cell.max() < 27
    assert not torch.allclose(moved, points)


def test_jitter_has_the_asked_spread():
    torch.manual_seed(0)
    noise = jitter(torch.zeros(4, 3, 5000), 0.01)
    assert noise.std().item() == pytest.approx(0.01, rel=0.02)


@pytest.mark.parametrize("name", ["dae", "rs"])
def test_point_methods_refuse_other_inputs(name):
    ds, data, _ = _prepared("toy2d")
    # params validation refuses the pair first, naming the dataset that fits
    with pytest.raises(ValueError, match=rf"method {name} needs a dataset with point_clouds.*fit: demo, shapenet_part"):
        parse_params({"method": name, "dataset": "toy2d"})
    # and the method itself refuses other inputs, when built around the validation
    params = parse_params({"method": name, "dataset": "shapenet_part"})
    with pytest.raises(ValueError, match=rf"method {name}: needs point clouds \[N, 3, points\]"):
        build_method(name, data.num_tasks, params, ds, data)
