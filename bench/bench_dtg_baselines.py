#!/usr/bin/env python
"""Cost of DTG-AuxL and its bilevel baselines against STL, in the manner of its Table A1 (a report, not a test):
the median wall time of a training epoch of ``dtg_auxl`` (the joint generator, an IFT step every N), ``jtds``
(one weighted backward per step, an IFT step every N) and ``maoal`` (one backward per task through the trunk
per step, an IFT step of the modified lower update every N), beside ``auxilearn_linear`` and ``maxl``, trained
in one process and interleaved round by round (``bench_label_epochs.epoch_seconds``), validation
excluded. Printed: median epoch seconds and the ratio to STL's.

Run from the repository root:  python bench/bench_dtg_baselines.py [--dataset demo] [--epochs 2] [--rounds 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_label_epochs import epoch_seconds, print_ratios  # noqa: E402


@click.command()
@click.option("--dataset", default="demo", show_default=True)
@click.option("--methods", default="stl,auxilearn_linear,maxl,dtg_auxl,jtds,maoal", show_default=True,
              help="comma-separated; the first is the baseline of the ratios")
@click.option("--epochs", default=2, show_default=True, help="epochs per method per round")
@click.option("--rounds", default=3, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads (0: torch's default)")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]), show_default=True)
def main(dataset: str, methods: str, epochs: int, rounds: int, threads: int, device: str) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    seconds, sizes = epoch_seconds(dataset, tuple(methods.split(",")), epochs, rounds, device)
    print_ratios(dataset, seconds, sizes, device)


if __name__ == "__main__":
    main()
