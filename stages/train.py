"""DVC stage `train`: one bilevel training run of `method` per seed; checkpoints and logs to models/.

models/ holds only what a rerun with the same inputs reproduces bit for bit (checkpoints via the byte-stable
``torch_save``, histories without wall-clock times), so an identical retrain leaves DVC seeing no change. The
wall-clock epoch times go to reports/timings.json, outside every DVC output (the report's epoch-time line
reads them from there).

While it trains, each seed's losses, task weights and validation loss are logged live (``pipeline.live``):
dvclive series under reports/live/seed_<s>/, the cross-seed curves reports/live/*.tsv for `dvc plots`, and
reports/live/metrics.json (seed, step, main and validation loss of the latest logged step) for `dvc exp show`.

Every ``train.checkpoint_every`` steps, and when the stage is stopped by SIGTERM/SIGINT, each seed's run writes a
resumable checkpoint to models/checkpoints/seed_<s>.pt (``pipeline.checkpoint``; models/ persists when the stage
fails): a re-run with the same params continues from it and ends with the result of an uninterrupted run. The
final swap of models/ removes them."""
import click

from pipeline.cli import stage
from pipeline.experiment import load_experiment
from pipeline import live
from pipeline.checkpoint import Checkpointer, checkpoint_path, fingerprint
from pipeline.io import atomic_dir, check_writable, sha256_file, torch_save, write_json
from pipeline.paths import MODELS, TIMINGS, prepared_dir
from pipeline.training import device_name, resolve_device, train_run

WALL_CLOCK_KEYS = ("epoch_seconds",)  # history entries that differ between identical runs


@click.command()
@stage
def main(params) -> None:
    check_writable(MODELS)  # a read-only models/ (or its parent) fails now, not after all the training
    exp = load_experiment(params)
    device = resolve_device(params.device)
    timings = {}
    live.reset()
    task_names = exp.data.task_names
    # what else a result depends on: the prepared data, and the kind of device (`auto` may resolve differently)
    data_id = {"prepared": sha256_file(prepared_dir(params.dataset) / "manifest.json"), "device_type": device.type}
    with atomic_dir(MODELS) as tmp:
        for seed in params.seeds:
            logger = live.LiveLogger(seed, task_names, params.train.steps, params.train.log_every)
            checkpoint = Checkpointer(checkpoint_path(seed), params.train.checkpoint_every,
                                      fingerprint(params, seed, exp.splits, data_id))
            result = train_run(exp.dataset, exp.data, exp.splits, params, seed, device=device, progress=True,
                               live=logger, checkpoint=checkpoint)
            history = dict(result.history)
            timings[f"seed_{seed}"] = {k: history.pop(k) for k in WALL_CLOCK_KEYS if k in history}
            out = tmp / f"seed_{seed}"
            torch_save(out / "model.pt", result.model_state)
            torch_save(out / "method.pt", {"initial": result.method_state_initial, "final": result.method_state_final})
            write_json(out / "history.json", history)
        write_json(tmp / "run.json", {"method": params.method, "dataset": params.dataset, "seeds": params.seeds,
                                      "device": device_name(device)})
    try:  # informational only: a failure here must not fail the finished training
        write_json(TIMINGS, {"method": params.method, "dataset": params.dataset, "seeds": params.seeds,
                             "device": device_name(device), "threads": params.threads, "per_seed": timings})
    except OSError as err:
        click.echo(f"warning: epoch times not written to {TIMINGS}: {err}", err=True)
    click.echo(f"trained {params.method} on {params.dataset} for seeds {params.seeds} ({device_name(device)})")


if __name__ == "__main__":
    main()
