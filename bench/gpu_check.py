"""The GPU check (run by ``bench/gpu_check.sh``): drives the library directly (no DVC) and prints figures measured
in one run, with their ratios.

1. the CUDA-only tests (``pytest -m cuda``; each skipped with its reason when no GPU is visible);
2. one NYUv2-sized SegNet epoch (the paper's SegNet, width 64, 5 stages, on 288 x 384 stand-in data generated
   in memory: ``--nyu-images`` images, batch 8) of ``stl`` and ``auxilearn_convnet``, without and with AMP
   when ``train.amp`` exists (else reported 'not available');
3. a CUB-sized ResNet-18 step (256 x 256 images, 200 classes, batch 32): ``stl`` and ``auxilearn_linear`` on
   CUB (312 attribute auxiliaries, 224 px crops), and ``stl``, ``auxilearn_labels`` (AuxiLearn's label
   generator) and ``maxl`` on the CIFAR-family dataset at that size (CUB offers no generated-label tasks);
4. the peak GPU memory of each (``torch.cuda.max_memory_allocated``);
5. a 2-process DDP smoke run when more than one GPU is visible (else 'skipped: 1 GPU visible').

Each configuration runs a 3-step warm-up first. The epoch time is a whole run's (with its one validation pass
over a small validation split); a step's time is the difference of a long and a 3-step run over their step
counts. Data is random (shapes, label ranges and normals valid): the
figures are costs, not results. ``--smoke``: tiny sizes on whatever device there is (the CPU here).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config.params import parse_params  # noqa: E402
from pipeline.datasets.shared.base import TaskData  # noqa: E402
from pipeline.core.registry import DATASETS  # noqa: E402
from pipeline.core.schema import TrainConfig  # noqa: E402
from pipeline.engine.training import train_run  # noqa: E402

START = time.perf_counter()


def say(line: str = "") -> None:
    print(line, flush=True)


def elapsed() -> float:
    return time.perf_counter() - START


# -- data generated in memory, in each dataset's TaskData layout ----------------------------------------------

def nyuv2_data(n: int, hw: tuple[int, int], seed: int = 0) -> TaskData:
    """Random images; labels in -1..12, positive depth with holes, unit normals: NYUv2's target layout."""
    rng = np.random.default_rng(seed)
    h, w = hw
    images = rng.integers(0, 256, (n, 3, h, w), dtype=np.uint8)
    targets = np.empty((n, 5, h, w), np.float32)
    targets[:, 0] = rng.integers(-1, 13, (n, h, w))
    targets[:, 1] = rng.uniform(0.5, 10, (n, h, w)) * (rng.random((n, h, w)) > 0.05)
    normals = rng.standard_normal((n, 3, h, w)).astype(np.float32)
    targets[:, 2:5] = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    meta = {"source": "gpu_check (random)", "num_classes": 13, "is_train": np.ones(n, bool), "image_size": hw}
    return TaskData(torch.from_numpy(images), torch.from_numpy(targets), ["segmentation", "depth", "normal"], meta)


def image_data(n: int, size: int, classes: int, attributes: int, seed: int = 0) -> TaskData:
    """Random images of ``size``² and labels; CUB's layout when ``attributes`` (targets [N, 1 + A]), else the
    CIFAR family's (targets [N, 1])."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
    labels = torch.from_numpy(np.arange(n) % classes).float()[:, None]
    meta: dict[str, Any] = {"source": "gpu_check (random)", "num_classes": classes, "is_train": np.ones(n, bool),
                            "image_size": size, "mean": [0.5] * 3, "std": [0.29] * 3,
                            "class_names": [f"class_{c}" for c in range(classes)]}
    if not attributes:
        return TaskData(images, labels, ["class"], meta)
    attrs = torch.from_numpy(rng.integers(0, 2, (n, attributes))).float()
    meta.update(num_attributes=attributes, image_ids=np.arange(n))
    return TaskData(images, torch.cat([labels, attrs], 1), ["species", *[f"attr_{a}" for a in range(attributes)]],
                    meta)


def splits_of(n_train: int, n_aux: int, n_val: int) -> dict[str, np.ndarray]:
    edges = np.cumsum([0, n_train, n_aux, n_val, n_val])
    return {k: np.arange(edges[i], edges[i + 1]) for i, k in enumerate(("train", "aux", "val", "test"))}


# -- one measured configuration ---------------------------------------------------------------------------------

def amp_available() -> bool:
    return "amp" in TrainConfig.model_fields


def measure(dataset_name: str, method: str, data: TaskData, splits: dict[str, np.ndarray], steps: int,
            model: dict, train: dict, device: torch.device) -> dict[str, float]:
    """A 3-step warm-up run, then timed runs of ``short`` and ``steps`` steps: the long run's seconds and peak GPU
    memory, and the seconds per step from the difference of the two (so the fixed cost of a run, its
    construction and its one validation pass, is not counted in the step)."""
    def params(n: int) -> Any:
        return parse_params({"dataset": dataset_name, "method": method, "seeds": [0], "device": device.type,
                             "data_loading": "memory",
                             "datasets": {dataset_name: {"model": model, "train": {**train, "steps": n,
                                                                                    "eval_every": n}}}})
    dataset = DATASETS.get(dataset_name)(params(1).profile.model)
    cuda = device.type == "cuda"

    def timed(n: int) -> float:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train_run(dataset, data, splits, params(n), 0, device=device)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    train_run(dataset, data, splits, params(3), 0, device=device)  # warm-up: kernels, allocator, cudnn choice
    short = max(1, min(3, steps - 1))
    t_short = timed(short)
    seconds = timed(steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    return {"seconds": seconds, "per_step": (seconds - t_short) / (steps - short), "peak_mb": peak}


def table(rows: list[tuple[str, dict[str, float] | str]], base: str, unit: str) -> None:
    """One line per configuration with its time, peak memory and both as ratios to ``base``'s."""
    ref = dict((k, v) for k, v in rows if isinstance(v, dict)).get(base)
    say(f"| configuration | {unit} | × {base} | peak GPU memory (MiB) | × {base} |")
    say("|---|---|---|---|---|")
    for name, r in rows:
        if isinstance(r, str):
            say(f"| {name} | {r} | | | |")
            continue
        value = r["seconds"] if unit.startswith("epoch") else r["per_step"]
        ref_value = None if ref is None else (ref["seconds"] if unit.startswith("epoch") else ref["per_step"])
        mem = "no CUDA" if math.isnan(r["peak_mb"]) else f"{r['peak_mb']:.0f}"
        mem_ratio = "" if ref is None or math.isnan(r["peak_mb"]) else f"{r['peak_mb'] / ref['peak_mb']:.2f}"
        say(f"| {name} | {value:.3f} s | {'' if ref_value is None else f'{value / ref_value:.2f}'} | {mem} | "
            f"{mem_ratio} |")
    say()


def guarded(name: str, budget: float, need: float, fn: Callable[[], dict[str, float]]) -> dict[str, float] | str:
    """``fn()``, unless the check's time budget has less than ``need`` seconds left, or it fails (reported)."""
    if elapsed() + need > budget:
        return f"skipped: time budget ({budget:.0f} s) nearly spent"
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - one configuration's failure is reported, the others still run
        detail = " ".join(str(err).split())[:300]
        return f"FAILED: {type(err).__name__}: {detail}"


# -- sections ------------------------------------------------------------------------------------------------

def cuda_tests() -> None:
    say("## 1. CUDA-only tests (pytest -m cuda)")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text())
    if not files:
        say("no test is marked cuda\n")
        return
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", *files]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    say(f"`{' '.join(cmd[1:])}` (exit {done.returncode}):")
    say("\n".join("    " + line for line in lines[-25:]))
    say()


def nyuv2_epoch(args: argparse.Namespace, device: torch.device) -> None:
    hw, n, width, stages = ((24, 32), 24, 4, 2) if args.smoke else ((288, 384), args.nyu_images, 64, 5)
    batch = 8
    n_aux, n_val = (4, 4) if args.smoke else (8, 16)
    n_train = (n - n_aux - 2 * n_val) // batch * batch
    steps = n_train // batch  # one epoch
    say(f"## 2. NYUv2-sized SegNet epoch: {n_train} training images at {hw[0]} x {hw[1]}, batch {batch}, {steps} "
        f"steps, SegNet width {width} with {stages} stages, on {device}")
    data = nyuv2_data(n_train + n_aux + 2 * n_val, hw)
    splits = splits_of(n_train, n_aux, n_val)
    model = {"width": width, "stages": stages}
    rows: list[tuple[str, dict[str, float] | str]] = []
    for method in ("stl", "auxilearn_convnet"):
        for amp in ("none", "bf16"):
            name = f"{method}, amp {amp}"
            if amp != "none" and not amp_available():
                rows.append((name, "not available (no train.amp param on this commit)"))
                continue
            train = {"batch_size": batch, **({"amp": amp} if amp_available() else {})}
            rows.append((name, guarded(name, args.budget_s, 20, lambda m=method, t=train: measure(
                "nyuv2", m, data, splits, steps, model, t, device))))
    table(rows, "stl, amp none", "epoch")
    del data


def resnet_steps(args: argparse.Namespace, device: torch.device) -> None:
    size, n_train, batch, steps = (32, 8, 4, 3) if args.smoke else (256, 320, 32, 20)
    classes = 8 if args.smoke else 200
    say(f"## 3. CUB-sized ResNet-18 step: {size} x {size} images, {classes} classes, batch {batch}; a step's time from "
        f"a {steps}-step run less a 3-step run, on {device}")
    splits = splits_of(n_train, batch, batch)
    n = n_train + 3 * batch
    cub = image_data(n, size, classes, attributes=8 if args.smoke else 312)
    cifar = image_data(n, size, classes, attributes=0)
    cub_train = {"batch_size": batch}
    rows: list[tuple[str, dict[str, float] | str]] = []
    for dataset_name, data, method, model in (
            ("cub", cub, "stl", {"backbone": "resnet18"}),
            ("cub", cub, "auxilearn_linear", {"backbone": "resnet18"}),
            ("cifar10", cifar, "stl", {"backbone": "resnet18"}),
            ("cifar10", cifar, "auxilearn_labels", {"backbone": "resnet18"}),
            ("cifar10", cifar, "maxl", {"backbone": "resnet18"})):
        name = f"{dataset_name} layout: {method}"
        rows.append((name, guarded(name, args.budget_s, 15, lambda d=dataset_name, x=data, m=method, mc=model:
                                   measure(d, m, x, splits, steps, mc, cub_train, device))))
    say("CUB (given attribute auxiliaries, 224 px crops):")
    table(rows[:2], "cub layout: stl", "step")
    say("CIFAR-family dataset at CUB size (generated auxiliary labels: AuxiLearn's label generator vs MAXL):")
    table(rows[2:], "cifar10 layout: stl", "step")


def _ddp_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    torch.manual_seed(0)
    dataset = DATASETS.get("nyuv2")()
    data = nyuv2_data(16, (96, 128), seed=rank)  # each rank its own shard
    net = dataset.build_model(data, parse_params({"dataset": "nyuv2"}).profile.model).cuda(rank)
    model = DistributedDataParallel(net, device_ids=[rank])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for step in range(5):
        rows = torch.arange(step % 4 * 4, step % 4 * 4 + 4)
        x, y = dataset.batch_transform(data.inputs[rows].cuda(rank), data.targets[rows].cuda(rank), train=True)
        loss = dataset.per_task_losses(model(x), y).flatten(2).mean(2)[:, 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        print(f"DDP smoke: {world} processes (nccl), 5 SGD steps of the NYUv2 SegNet on per-rank data in "
              f"{time.perf_counter() - start:.2f} s; parameters identical across ranks: {same}", flush=True)
    dist.destroy_process_group()


def ddp_smoke(device: torch.device) -> None:
    say("## 5. DDP smoke run")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        say(f"skipped: {gpus} GPU visible\n" if gpus == 1 else "skipped: no CUDA (0 GPUs visible)\n")
        return
    say("(torch's DistributedDataParallel around the workbench's primary network: a check of the machine's "
        "DDP path; the workbench's own torchrun training is planned, not built)")
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, 29500 + os.getpid() % 1000), nprocs=2, join=True)
    say()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check of this script)")
    parser.add_argument("--nyu-images", type=int, default=816, help="NYUv2-sized stand-in images (795 in NYUv2's "
                        "train split; 816 = 792 train + 8 aux + 16 val/test)")
    parser.add_argument("--budget-s", type=float, default=420, help="skip remaining configurations past this")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    say("# auxbench GPU check" + (" (--smoke: tiny sizes)" if args.smoke else ""))
    say(f"torch {torch.__version__}, CUDA {'available' if cuda else 'NOT available: no CUDA, GPU parts run on the CPU'}"
        + (f", {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}" if cuda else ""))
    say(f"train.amp param: {'available' if amp_available() else 'not available'}\n")
    if cuda:
        torch.backends.cudnn.benchmark = True
    if not args.skip_tests:
        cuda_tests()
    nyuv2_epoch(args, device)
    resnet_steps(args, device)
    say("## 4. Peak memory: in the tables above (torch.cuda.max_memory_allocated of each timed run)\n")
    ddp_smoke(device)
    say(f"total {elapsed():.0f} s")


if __name__ == "__main__":
    main()
