"""Two processes (gloo, CPU) against one: W's DDP step on shards equals the single-process step on the whole
batch, and the outer update, averaged across processes (``pipeline.core.distributed.mean_across``), equals the
single-process hypergradient on the union of the shards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.core import distributed
from pipeline.methods.bilevel import BilevelConfig, HyperOptimizer, neumann_hypergradient

WORLD = 2


def problem(seed: int = 0):
    """A shared tanh layer under a main and two auxiliary outputs, φ the auxiliary weights, seeded data."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    phi = torch.tensor([0.7, 0.2], requires_grad=True)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
    xa, ya = torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    return net, phi, (x, y), (xa, ya)


def train_loss(net: nn.Module, phi: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    per_task = ((net(x) - y) ** 2).mean(0)  # mean over samples: linear in the batch
    return per_task[0] + (phi * per_task[1:]).sum()


def aux_loss(net: nn.Module, xa: torch.Tensor, ya: torch.Tensor) -> torch.Tensor:
    return ((net(xa)[:, 0] - ya) ** 2).mean()


def run(out: Path) -> dict[str, torch.Tensor]:
    """W's SGD step through DDP (or plainly, with one process), then one hyper step and the bare hypergradient."""
    net, phi, (x, y), (xa, ya) = problem()
    rows, aux_rows = distributed.shard(torch.arange(len(x))), distributed.shard(torch.arange(len(xa)))
    model = nn.parallel.DistributedDataParallel(net) if distributed.active() else net
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    per_task = ((model(x[rows]) - y[rows]) ** 2).mean(0)
    (per_task[0] + (phi.detach() * per_task[1:]).sum()).backward()
    opt.step()
    params = list(net.parameters())  # the outer update differentiates the unwrapped network
    hypergradient = neumann_hypergradient(train_loss(net, phi, x[rows], y[rows]), aux_loss(net, xa[aux_rows], ya[aux_rows]),
                                          params, [phi], neumann_steps=3, neumann_lr=0.05)[0]
    hyper = HyperOptimizer([phi], BilevelConfig(optimizer="sgd", lr=0.5, momentum=0.0, neumann_lr="auto"))
    stats = hyper.step(train_loss(net, phi, x[rows], y[rows]), aux_loss(net, xa[aux_rows], ya[aux_rows]), params)
    return {"weights": torch.cat([p.detach().reshape(-1) for p in net.parameters()]),
            "hypergradient": hypergradient, "phi": phi.detach().clone(), "alpha": torch.tensor(stats.neumann_lr)}


def worker(rank: int, init_file: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save(run(Path(out)), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_one_process_is_the_identity():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    v = [torch.ones(3)]
    assert distributed.mean_across(v)[0] is v[0] and torch.equal(distributed.shard(torch.arange(5)), torch.arange(5))


def test_ddp_w_step_equals_the_whole_batch(ranks):
    single = run(Path("."))
    for r in ranks:
        torch.testing.assert_close(r["weights"], single["weights"], rtol=1e-5, atol=1e-6)


def test_averaged_outer_update_equals_the_union_of_the_shards(ranks):
    single = run(Path("."))
    assert single["hypergradient"].abs().max() > 1e-3  # a real signal, not two zeros agreeing
    for r in ranks:
        torch.testing.assert_close(r["hypergradient"], single["hypergradient"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["alpha"], single["alpha"], rtol=1e-4, atol=0)  # the same power iteration
        torch.testing.assert_close(r["phi"], single["phi"], rtol=1e-4, atol=1e-6)


def test_shards_must_be_equal(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="multiples of 2"):
        distributed.shard(torch.arange(5))
