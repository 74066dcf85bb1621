"""Streaming (data_loading: stream) against in-memory (memory) on a CUB-sized stand-in, measured in one run.

Writes a synthetic ``cub.h5`` in the prepared format (random 256 x 256 images, ``--images`` of them, half
official train; labels and attributes random) into a temporary folder, then runs each measurement in a fresh
subprocess (so its ``ru_maxrss`` is its own peak host memory) on the CPU:

- ``data``: W's batch stream alone (``BatchStream.next`` + CUB's crop/flip augmentation), batches/s;
- ``train``: ``load_data`` + ``train_run`` (STL, small CNN of width 8 at 224 px crops, batch 32, one validation
  pass at the end), steps/s and peak memory: what the train stage does per seed;
- ``evaluate``: ``load_data`` + ``Dataset.metrics`` on the test split: what the evaluate stage does per seed.

Each for ``memory`` and ``stream`` (``--workers`` DataLoader workers), printed with the stream/memory ratios.
The images are noise: this measures the data path, not learning.

    python bench/bench_streaming.py [--images 1200] [--steps 30] [--workers 2]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_standin(folder: Path, images: int, size: int = 256, classes: int = 100, attributes: int = 312,
                  seed: int = 0) -> None:
    """``folder/cub.h5`` as ``pipeline.datasets.cub.prepared`` writes it (same datasets and attributes), a chunk
    of images at a time so that this process never holds them all."""
    import h5py

    from pipeline.datasets.shared.h5 import TEXT, put

    rng = np.random.default_rng(seed)
    labels = np.arange(images) % classes
    is_train = (np.arange(images) // classes) % 2 == 0  # half of each class official-train
    with h5py.File(folder / "cub.h5", "w") as f:
        ds = f.create_dataset("images", shape=(images, 3, size, size), dtype=np.uint8, track_times=False)
        for start in range(0, images, 100):
            stop = min(images, start + 100)
            ds[start:stop] = rng.integers(0, 256, (stop - start, 3, size, size), dtype=np.uint8)
        put(f, "labels", labels, np.int64)
        put(f, "attributes", rng.integers(0, 2, (images, attributes)), np.uint8)
        put(f, "is_train", is_train.astype(np.uint8), np.uint8)
        put(f, "image_ids", np.arange(1, images + 1), np.int64)
        put(f, "image_paths", [f"{i}.jpg" for i in range(images)], TEXT)
        put(f, "class_names", [f"class_{c}" for c in range(classes)], TEXT)
        put(f, "attribute_names", [f"attr_{a}" for a in range(attributes)], TEXT)
        f.attrs["image_size"], f.attrs["source"] = size, "bench stand-in (noise)"
        f.attrs["mean"], f.attrs["std"] = np.full(3, 0.5), np.full(3, 0.29)


def _params(mode: str, workers: int, steps: int):
    from pipeline.config.params import parse_params

    return parse_params({"dataset": "cub", "method": "stl", "data_loading": mode, "workers": workers,
                         "datasets": {"cub": {"split": {"k_shot": 0, "aux": 20}, "model": {"backbone_width": 8},
                                              "train": {"steps": steps, "batch_size": 32, "eval_every": steps}}}})


def child(what: str, mode: str, folder: Path, workers: int, steps: int) -> dict:
    """One measurement in this (fresh) process; returns its figures and this process's peak RSS."""
    import torch

    from pipeline.datasets.shared.loading import load_data
    from pipeline.core.registry import DATASETS
    from pipeline.engine.training import BatchStream, stream_generator, train_run

    torch.set_num_threads(1)
    params = _params(mode, workers, steps)
    dataset = DATASETS.get("cub")(params.profile.model)
    if what == "baseline":  # the same imports and params, no data: what every process costs anyway
        return {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    start = time.perf_counter()
    data = load_data(dataset, folder, mode, params.stream_above_mb)
    loaded = time.perf_counter() - start
    splits = {k: v for k, v in np.load(folder / "splits.npz").items()}
    cpu = torch.device("cpu")
    out = {"load_s": loaded}
    if what == "data":
        stream = BatchStream(data, splits["train"], 32, stream_generator(0, "weights"), cpu, None, workers)
        start = time.perf_counter()
        for _ in range(steps):
            x, y, _, _ = stream.next()
            x, _ = dataset.batch_transform(x, y, train=True, generator=stream.generator)
        out["per_s"] = steps / (time.perf_counter() - start)
    elif what == "train":
        start = time.perf_counter()
        train_run(dataset, data, splits, params, 0, device=cpu)
        out["per_s"] = steps / (time.perf_counter() - start)
    else:
        model = dataset.build_model(data, params.profile.model)
        start = time.perf_counter()
        dataset.metrics(model, data, torch.as_tensor(splits["test"]))
        out["per_s"] = len(splits["test"]) / (time.perf_counter() - start)
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    del data
    stream = None  # the loaders go: their workers exit and are reaped, so RUSAGE_CHILDREN counts them
    gc.collect()
    out["worker_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def run_child(what: str, mode: str, folder: Path, workers: int, steps: int, fixed_malloc: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fixed_malloc:  # see --default-malloc
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    cmd = [sys.executable, __file__, "--child", what, "--mode", mode, "--folder", str(folder),
           "--workers", str(workers), "--steps", str(steps)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=30, help="steps of the train loop (data loop: 5x)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's dynamic mmap threshold on: freed large buffers then stay in the heap "
                             "and the peak RSS of the same loop varies by hundreds of MiB with allocation history; "
                             "by default every measuring process gets MALLOC_MMAP_THRESHOLD_=1 MiB, so that large "
                             "buffers are returned when freed and the peaks compare what each path holds")
    parser.add_argument("--child", choices=["baseline", "data", "train", "evaluate"])
    parser.add_argument("--mode", choices=["memory", "stream"])
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.folder, args.workers, args.steps)))
        return

    from pipeline.core.registry import DATASETS

    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_standin(folder, args.images)
        dataset = DATASETS.get("cub")()
        splits = dataset.make_splits(dataset.open_rows(folder), _params("stream", 0, 1).split)
        np.savez(folder / "splits.npz", **splits)
        mb = (folder / "cub.h5").stat().st_size / 2**20
        print(f"stand-in: {args.images} images at 256 x 256 ({mb:.0f} MiB cub.h5, written in "
              f"{time.perf_counter() - start:.1f} s); train {len(splits['train'])}, val {len(splits['val'])}, "
              f"test {len(splits['test'])}; CPU, 1 thread per process, {args.workers} DataLoader workers\n")
        rows = [("data", "W's batches + augmentation", 5 * args.steps, "batches/s"),
                ("train", "train_run (STL, small CNN w=8)", args.steps, "steps/s"),
                ("evaluate", "metrics on test", args.steps, "images/s")]
        fixed = not args.default_malloc
        print(f"glibc malloc: {'MALLOC_MMAP_THRESHOLD_=1048576 in every measuring process' if fixed else 'default'}")
        base = run_child("baseline", "memory", folder, args.workers, 1, fixed)["maxrss_mb"]
        print(f"Baseline: a process with the same imports and no data peaks at {base:.0f} MiB; the RSS columns are "
              "the peak above it.\n")
        print("| loop | memory: rate | stream: rate | stream/memory | memory: peak RSS − baseline (MiB) | "
              "stream: peak RSS − baseline (MiB) | stream/memory |")
        print("|---|---|---|---|---|---|---|")
        workers_rss: dict[str, float] = {}
        for what, title, steps, unit in rows:
            mem = run_child(what, "memory", folder, args.workers, steps, fixed)
            stream = run_child(what, "stream", folder, args.workers, steps, fixed)
            print(f"| {title} ({steps if what != 'evaluate' else len(splits['test'])}) | {mem['per_s']:.2f} {unit} | "
                  f"{stream['per_s']:.2f} {unit} | {stream['per_s'] / mem['per_s']:.2f} | {mem['maxrss_mb'] - base:.0f} | "
                  f"{stream['maxrss_mb'] - base:.0f} | "
                  f"{(stream['maxrss_mb'] - base) / max(mem['maxrss_mb'] - base, 1e-9):.2f} |", flush=True)
            if stream["worker_maxrss_mb"]:
                workers_rss[title] = stream["worker_maxrss_mb"]
        print("\nPeak RSS: each measuring process's own ru_maxrss (a fresh process per cell). DataLoader workers are "
              "processes of their own; the largest one's ru_maxrss (pages shared with its parent counted again): "
              + (", ".join(f"{k} {v:.0f} MiB" for k, v in workers_rss.items()) or "none"))


if __name__ == "__main__":
    main()
