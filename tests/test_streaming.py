"""data_loading: stream reads the prepared file through a DataLoader and gives the same batches (inputs,
targets, rows, augmentation) and the same run as the in-memory path for a seed; evaluation reads chunks."""
from __future__ import annotations

import functools
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.params import ParamsError
from pipeline.datasets.shared.loading import in_memory_bytes, load_data
from pipeline.datasets.shared.rows import H5Rows, is_file_backed
from pipeline.core.registry import DATASETS
from pipeline.engine.training import STREAM_ROLES, BatchStream, stream_generator, train_run
from tests.conftest import make_params

CPU = torch.device("cpu")
# tiny stand-ins: CUB (random crops and flips: an augmentation that draws) and NYUv2 (dense float targets
# assembled from three HDF5 datasets), and CIFAR-10 (padded crops)
SMALL = {
    "cub": {"prepare": {"standin_num_classes": 4, "standin_images_per_class": 6, "image_size": 24},
            "split": {"k_shot": 2, "aux": 2}},
    "nyuv2": {"prepare": {"standin_train": 12, "standin_test": 4, "image_size": [16, 24]}},
    "cifar10": {"prepare": {"standin_train_per_class": 3, "standin_test_per_class": 2},
                "split": {"train_fraction": 0.5, "val": 6}},
}


def _params(name: str, **overrides):
    cfg = SMALL[name]
    overrides.setdefault("method", "stl" if name == "cifar10" else "auxilearn_linear")
    return make_params(dataset=name, datasets={name: {**cfg, **overrides.pop("profile", {})}}, **overrides)


@functools.lru_cache(maxsize=None)
def _prepared(name: str):
    params = _params(name)
    ds = DATASETS.get(name)(params.profile.model)
    folder = Path(tempfile.mkdtemp(prefix=f"stream_{name}_"))
    ds.prepare(params.dataset_config, folder)
    memory, files = ds.load(folder), ds.open_rows(folder)
    return ds, folder, memory, files, ds.make_splits(memory, params.split)


def _batches(ds, data, rows, batch_size, seed, role, steps, workers=0, unlabelled=None):
    gen = stream_generator(seed, role)
    stream = BatchStream(data, rows, batch_size, gen, CPU, unlabelled, workers)
    out = []
    for _ in range(steps):  # as train_run draws them: the batch, then its augmentation from the same generator
        x, y, r, labelled = stream.next()
        x, y = ds.batch_transform(x, y, train=True, generator=stream.generator)
        out.append((x, y, r, labelled))
    return out, gen.get_state()


@pytest.mark.parametrize("name", ["cub", "nyuv2", "cifar10"])
def test_open_rows_reads_what_load_holds(name):
    ds, _, memory, files, _ = _prepared(name)
    assert is_file_backed(files) and not is_file_backed(memory)
    assert files.inputs.shape == memory.inputs.shape and files.inputs.dtype == memory.inputs.dtype
    assert files.targets.shape == memory.targets.shape and files.targets.dtype == memory.targets.dtype
    assert files.task_names == memory.task_names and files.meta.keys() == memory.meta.keys()
    n = len(memory)
    for index in ([3, 0, 3, n - 1], torch.tensor([n - 1, 1]), np.array([-1, 2]), slice(1, 5, 2), 2, -2,
                  torch.arange(n) % 2 == 0, ([1, 0], 0)):
        for held, read in ((memory.inputs, files.inputs), (memory.targets, files.targets)):
            assert torch.equal(held[index], read[index]), index
    with pytest.raises(IndexError, match="out of range"):
        files.inputs[[n]]
    assert in_memory_bytes(files) == in_memory_bytes(memory)


@pytest.mark.parametrize("name,batch_size", [("cub", 5), ("nyuv2", 3), ("cifar10", 0)])
def test_streamed_batches_equal_the_in_memory_ones_for_every_role(name, batch_size):
    ds, _, memory, files, splits = _prepared(name)
    rows = splits["train"]
    steps = 2 * len(rows) // max(batch_size, 1) + 3  # more than two epochs, so the reshuffles are covered
    for seed, role in ((0, "weights"), (3, "outer"), (3, "diagnostics")):
        want, want_state = _batches(ds, memory, rows, batch_size, seed, role, steps,
                                    unlabelled=splits.get("unlabelled"))
        got, got_state = _batches(ds, files, rows, batch_size, seed, role, steps, unlabelled=splits.get("unlabelled"))
        assert len(got) == len(want)
        for a, b in zip(want, got):
            for u, v in zip(a, b):
                assert u.dtype == v.dtype and torch.equal(u, v)
        assert torch.equal(want_state, got_state)  # the augmentation drew as much from the generator
    assert set(STREAM_ROLES) == {"weights", "outer", "diagnostics"}


def test_worker_processes_read_the_same_batches():
    """Two DataLoader workers (each opening the file itself) over epochs: the same batches as in memory."""
    ds, _, memory, files, splits = _prepared("cub")
    rows = splits["train"]
    steps = len(rows) // 4 * 2 + 1
    want, _ = _batches(ds, memory, rows, 4, 1, "weights", steps)
    got, _ = _batches(ds, files, rows, 4, 1, "weights", steps, workers=2)
    assert all(torch.equal(u, v) for a, b in zip(want, got) for u, v in zip(a, b))
    clone = pickle.loads(pickle.dumps(files.inputs))  # what a spawned worker receives: no open handle
    assert clone._file is None and torch.equal(clone[[2, 1]], memory.inputs[[2, 1]])


@pytest.mark.parametrize("name,method", [("cub", "auxilearn_linear"), ("nyuv2", "auxilearn_convnet")])
def test_a_streamed_run_equals_the_in_memory_run(name, method):
    """The whole train_run (W's, the outer update's and the diagnostics' batches, validation in chunks) and the
    test metrics, bitwise."""
    ds, _, memory, files, splits = _prepared(name)
    params = _params(name, method=method, seeds=[0], methods={"bilevel": {"hyper_every": 2}},
                     profile={"train": {"steps": 6, "batch_size": 4, "eval_every": 3}})
    a = train_run(ds, memory, splits, params, 0, device=CPU)
    b = train_run(ds, files, splits, params, 0, device=CPU)
    a.history.pop("epoch_seconds"), b.history.pop("epoch_seconds")  # wall-clock times
    assert a.history == b.history
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    model = ds.build_model(memory, params.profile.model)
    model.load_state_dict(a.model_state)
    test = torch.as_tensor(splits["test"])
    assert ds.metrics(model, memory, test) == ds.metrics(model, files, test)


def test_data_loading_picks_the_path_and_validation_names_the_key():
    ds, folder, memory, _, _ = _prepared("cub")
    assert not is_file_backed(load_data(ds, folder, "memory", 1024.0))
    assert is_file_backed(load_data(ds, folder, "stream", 1024.0))
    size_mb = in_memory_bytes(memory) / 2**20
    assert not is_file_backed(load_data(ds, folder, "auto", size_mb * 1.01))  # fits: held in memory
    assert is_file_backed(load_data(ds, folder, "auto", size_mb * 0.99))  # does not: streamed
    demo = DATASETS.get("toy2d")()
    assert not type(demo).streams()
    with pytest.raises(ParamsError, match="data_loading: stream needs a dataset with a file-backed reader.*toy2d"):
        make_params(dataset="toy2d", data_loading="stream")
    with pytest.raises(ParamsError, match="workers"):
        make_params(workers=-1)
    assert make_params(dataset="cub", data_loading="stream", workers=0).workers == 0


@pytest.mark.cuda
def test_streamed_batches_on_cuda_equal_the_in_memory_ones():
    """On a GPU: pinned memory, non-blocking copies and two workers give the in-memory path's batches, augmented
    on the device alike."""
    ds, _, memory, files, splits = _prepared("cub")
    gpu = torch.device("cuda")
    rows = splits["train"]
    for data, workers in ((memory, 0), (files, 2)):
        gen = stream_generator(2, "weights")
        stream = BatchStream(data, rows, 5, gen, gpu, None, workers)
        got = []
        for _ in range(len(rows) // 5 * 2 + 1):
            x, y, r, labelled = stream.next()
            assert x.is_cuda and y.is_cuda
            got.append([t.cpu() for t in (*ds.batch_transform(x, y, train=True, generator=gen), r, labelled)])
        if workers == 0:
            want = got
    assert all(torch.equal(u, v) for a, b in zip(want, got) for u, v in zip(a, b))


@pytest.mark.parametrize("stop", [3, 4])  # mid-epoch, and at an epoch's end (4 batches of 5 in 22 rows)
def test_a_stream_resumes_from_its_state_on_either_path(stop):
    """``state()`` + the generator's state, loaded into a fresh stream (in memory or read from the file), give
    the batches the uninterrupted stream goes on to give."""
    ds, _, memory, files, splits = _prepared("cub")
    rows = splits["train"][:22]
    whole, _ = _batches(ds, memory, rows, 5, 4, "weights", stop + 6)
    gen = stream_generator(4, "weights")
    first = BatchStream(memory, rows, 5, gen, CPU)
    for _ in range(stop):
        x, y, _, _ = first.next()
        ds.batch_transform(x, y, train=True, generator=gen)
    saved, gen_state = first.state(), gen.get_state()
    for data in (memory, files):
        gen2 = torch.Generator()
        gen2.set_state(gen_state)
        resumed = BatchStream(data, rows, 5, gen2, CPU)
        resumed.load_state(saved)
        for want in whole[stop:]:
            x, y, r, labelled = resumed.next()
            got = (*ds.batch_transform(x, y, train=True, generator=gen2), r, labelled)
            assert all(torch.equal(u, v) for u, v in zip(want, got))
