"""DVC stage `train`: one bilevel training run of `method` per seed; checkpoints and logs to models/."""
import click

from pipeline.cli import stage
from pipeline.experiment import load_experiment
from pipeline.io import atomic_dir, torch_save, write_json
from pipeline.paths import MODELS
from pipeline.training import resolve_device, train_run


@click.command()
@stage
def main(params) -> None:
    exp = load_experiment(params)
    device = resolve_device(params.device)
    with atomic_dir(MODELS) as tmp:
        for seed in params.seeds:
            result = train_run(exp.dataset, exp.data, exp.splits, params, seed, device=device, progress=True)
            out = tmp / f"seed_{seed}"
            torch_save(out / "model.pt", result.model_state)
            torch_save(out / "method.pt", {"initial": result.method_state_initial, "final": result.method_state_final})
            write_json(out / "history.json", result.history)
        write_json(tmp / "run.json", {"method": params.method, "dataset": params.dataset, "seeds": params.seeds,
                                      "device": str(device)})
    click.echo(f"trained {params.method} on {params.dataset} for seeds {params.seeds} ({device})")


if __name__ == "__main__":
    main()
