"""DVC stage `train`: one bilevel training run of `method` per seed; checkpoints and logs to models/.

models/ holds only what a rerun with the same inputs reproduces bit for bit (checkpoints via the byte-stable
``torch_save``, histories without wall-clock times), so an identical retrain leaves DVC seeing no change. The
wall-clock epoch times go to reports/timings.json, outside every DVC output (the report's epoch-time line
reads them from there).

While it trains, each seed's losses, task weights and validation loss are logged live (``pipeline.engine.live``):
dvclive series under reports/live/seed_<s>/, the cross-seed curves reports/live/*.tsv for `dvc plots`, and
reports/live/metrics.json (seed, step, main and validation loss of the latest logged step) for `dvc exp show`.

Every ``train.checkpoint_every`` steps, and when the stage is stopped by SIGTERM/SIGINT, each seed's run writes a
resumable checkpoint to models/checkpoints/seed_<s>.pt (``pipeline.engine.checkpoint``; models/ persists when the
stage fails): a re-run with the same params continues from it and ends with the result of an uninterrupted run.
The final swap of models/ removes them.

With ``distributed.processes`` > 1 the stage re-runs itself under torchrun. ``parallel: batches``: every process
trains every seed on its shard of each batch (``pipeline.core.distributed``), and process 0 writes what one
process would (every process draws the same random numbers, so all resume from process 0's checkpoint).
``parallel: seeds``: each process trains its own seeds whole, and process 0 moves them into models/. Started by torchrun directly
(several machines), it joins the process group torchrun describes."""
import json
import os
import shutil
import sys
from pathlib import Path

import click

from pipeline.config.stage import stage
from pipeline.core import distributed
from pipeline.core.io import atomic_dir, check_writable, sha256_file, torch_save, write_json
from pipeline.core.paths import MODELS, TIMINGS, prepared_dir
from pipeline.engine import live
from pipeline.engine.checkpoint import Checkpointer, checkpoint_path, fingerprint
from pipeline.engine.experiment import load_experiment
from pipeline.engine.training import device_name, resolve_device, train_run

WALL_CLOCK_KEYS = ("epoch_seconds",)  # history entries that differ between identical runs
SEED_STAGING = Path(".dvc/tmp/train_seeds")  # parallel: seeds, each process's finished seeds before the swap


def launch_processes(processes: int) -> None:
    """Re-run this stage under torchrun with ``processes`` processes on this machine (replaces this process)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "stages.train"]
    click.echo(f"distributed.processes = {processes}: " + " ".join(command[1:]))
    sys.stdout.flush()
    os.execv(sys.executable, command)


@click.command()
@stage
def main(params) -> None:
    check_writable(MODELS)  # a read-only models/ (or its parent) fails now, not after all the training
    if params.distributed.processes > 1 and not distributed.launched_by_torchrun():
        launch_processes(params.distributed.processes)
    by_seeds = params.distributed.parallel == "seeds"
    device = distributed.setup(resolve_device(params.device), share_batches=not by_seeds)
    try:
        exp = load_experiment(params)
        if by_seeds and distributed.group_size() > 1:
            train_seeds_in_parallel(params, exp, device)
        elif distributed.is_main():
            train_and_write(params, exp, device)
        else:  # the other processes train their shards and resume from process 0's checkpoints; it writes
            for seed in params.seeds:
                train_run(exp.dataset, exp.data, exp.splits, params, seed, device=device,
                          checkpoint=seed_checkpointer(params, exp, seed, device, writer=False))
        distributed.barrier()
    finally:
        distributed.teardown()


def seed_checkpointer(params, exp, seed: int, device, writer: bool = True) -> Checkpointer:
    # what else a result depends on: the prepared data, and the kind of device (`auto` may resolve differently)
    data_id = {"prepared": sha256_file(prepared_dir(params.dataset) / "manifest.json"), "device_type": device.type}
    return Checkpointer(checkpoint_path(seed), params.train.checkpoint_every,
                        fingerprint(params, seed, exp.splits, data_id), writer=writer)


def train_seed(params, exp, seed: int, device, folder: Path) -> dict:
    """One seed trained and written to ``folder/seed_<s>/``; returns its wall-clock times (not written there)."""
    logger = live.LiveLogger(seed, exp.data.task_names, params.train.steps, params.train.log_every)
    result = train_run(exp.dataset, exp.data, exp.splits, params, seed, device=device, progress=True,
                       live=logger, checkpoint=seed_checkpointer(params, exp, seed, device))
    history = dict(result.history)
    timings = {k: history.pop(k) for k in WALL_CLOCK_KEYS if k in history}
    out = folder / f"seed_{seed}"
    torch_save(out / "model.pt", result.model_state)
    torch_save(out / "method.pt", {"initial": result.method_state_initial, "final": result.method_state_final})
    write_json(out / "history.json", history)
    return timings


def write_run(params, device, tmp: Path) -> None:
    write_json(tmp / "run.json", {"method": params.method, "dataset": params.dataset, "seeds": params.seeds,
                                  "device": device_name(device)})


def write_timings(params, device, timings: dict) -> None:
    try:  # informational only: a failure here must not fail the finished training
        write_json(TIMINGS, {"method": params.method, "dataset": params.dataset, "seeds": params.seeds,
                             "device": device_name(device), "threads": params.threads, "per_seed": timings})
    except OSError as err:
        click.echo(f"warning: epoch times not written to {TIMINGS}: {err}", err=True)
    click.echo(f"trained {params.method} on {params.dataset} for seeds {params.seeds} ({device_name(device)})")


def train_and_write(params, exp, device) -> None:
    live.reset()
    timings = {}
    with atomic_dir(MODELS) as tmp:
        for seed in params.seeds:
            timings[f"seed_{seed}"] = train_seed(params, exp, seed, device, tmp)
        write_run(params, device, tmp)
    write_timings(params, device, timings)


def train_seeds_in_parallel(params, exp, device) -> None:
    """``parallel: seeds``: process r trains seeds[r::processes] alone into a staging folder; process 0 then
    moves every seed into models/ in one swap (each seed's result is what one process would write)."""
    rank, size = distributed.group_rank(), distributed.group_size()
    if rank == 0:
        live.reset()
        live.start_combined()  # the shared curve files exist before any process appends to them
        shutil.rmtree(SEED_STAGING, ignore_errors=True)
        SEED_STAGING.mkdir(parents=True)
    distributed.barrier()
    for seed in params.seeds[rank::size]:
        write_json(SEED_STAGING / f"timings_seed_{seed}.json", train_seed(params, exp, seed, device, SEED_STAGING))
    distributed.barrier()
    if rank == 0:
        timings = {}
        with atomic_dir(MODELS) as tmp:
            for seed in params.seeds:
                shutil.move(str(SEED_STAGING / f"seed_{seed}"), str(tmp / f"seed_{seed}"))
                timings[f"seed_{seed}"] = json.loads((SEED_STAGING / f"timings_seed_{seed}.json").read_text())
            write_run(params, device, tmp)
        shutil.rmtree(SEED_STAGING, ignore_errors=True)
        write_timings(params, device, timings)


if __name__ == "__main__":
    main()
