"""DVC stage `dataset_code`: hashes of the other datasets' code that the selected dataset runs.

A dataset pair (``pet_cub``, ``cifar10_cifar100``) runs its members' code: Pet's splits, model and augmentation,
CUB's loader. dvc.yaml can name only the selected dataset's own package (``pipeline/datasets/${dataset}``),
because DVC does not expand a list of folders from params. So this stage reads every dataset package, follows the
selected one's imports of other dataset packages (transitively, by parsing, without importing them), and writes
those packages' hashes to data/dataset_code.json. Every stage that reads dataset code depends on that file. For a
dataset built from no other, the file names none: editing some other dataset's code re-runs only this stage
(about a second), whose output is then unchanged, so nothing after it runs.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import click

import pipeline.datasets
from pipeline.config.stage import stage
from pipeline.core.io import sha256_file, write_json
from pipeline.core.paths import DATASET_CODE

SHARED = "shared"  # pipeline/datasets/shared is every stage's own dependency in dvc.yaml
DATASETS_MODULE = "pipeline.datasets"
DATASETS_ROOT = Path(pipeline.datasets.__file__).parent  # the code, wherever the stage runs from


def _imported_modules(node: ast.Import | ast.ImportFrom, package: tuple[str, ...]) -> list[str]:
    """Absolute names of what one import statement in a module of ``package`` (its dotted parts) imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = package[:len(package) - node.level + 1] if node.level else ()  # level 1: this package
    module = ".".join([*base, *([node.module] if node.module else [])])
    # "from pipeline.datasets import cub" and "from .. import cub" import packages by their names
    return [f"{module}.{alias.name}" for alias in node.names] if module == DATASETS_MODULE else [module]


def _imported_packages(file: Path, root: Path) -> set[str]:
    """The dataset packages (folders below ``root``) that one source file imports."""
    package = (*DATASETS_MODULE.split("."), *file.relative_to(root).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_bytes(), filename=str(file))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for module in _imported_modules(node, package):
                if module.startswith(DATASETS_MODULE + "."):
                    found.add(module.split(".")[2])
    return found


def built_from(dataset: str, root: Path = DATASETS_ROOT) -> list[str]:
    """The other dataset packages whose code ``dataset``'s package runs, directly or through one another."""
    if not (root / dataset).is_dir():
        raise FileNotFoundError(f"dataset {dataset!r} has no package {root / dataset}")
    seen, todo = {dataset}, [dataset]
    while todo:
        package = root / todo.pop()
        for file in sorted(package.rglob("*.py")):  # byte-code caches hold .pyc only
            for name in sorted(_imported_packages(file, root) - seen - {SHARED}):
                if not (root / name).is_dir():
                    raise FileNotFoundError(f"{file} imports the dataset package {name!r}, but {root / name} "
                                            f"does not exist")
                seen.add(name)
                todo.append(name)
    return sorted(seen - {dataset})


def package_hash(package: Path) -> str:
    """sha256 over every file of ``package`` (relative path and bytes), compiled caches excluded."""
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(package).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def dataset_code(dataset: str, root: Path = DATASETS_ROOT) -> dict:
    """What data/dataset_code.json holds: the selected dataset and, by repository path, its members' hashes."""
    folder = DATASETS_MODULE.replace(".", "/")
    return {"dataset": dataset,
            "built_from": {f"{folder}/{name}": package_hash(root / name) for name in built_from(dataset, root)}}


@click.command()
@stage
def main(params) -> None:
    code = dataset_code(params.dataset)
    write_json(DATASET_CODE, code)
    names = ", ".join(code["built_from"]) or "no other dataset's code"
    click.echo(f"{params.dataset} runs {names}: {DATASET_CODE}")


if __name__ == "__main__":
    main()
