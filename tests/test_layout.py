"""The README's layout table matches the tree: every path it names exists, every part of `pipeline/` is named,
every registered dataset has its own package, and the code imports no module in a circle."""
import ast
import re
from pathlib import Path

from pipeline.core.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]


def layout_rows() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def test_every_path_in_the_layout_table_exists_and_every_part_is_named():
    named = []
    for row in layout_rows():  # the "where" column: `a/b.py`, `c.py` (beside the first path of the cell)
        paths = [p.replace("<name>", "cub") for p in re.findall(r"`([^`]+)`", row)]
        folder = Path(paths[0]).parent
        for path in paths:
            target = REPO / path if (REPO / path).exists() else REPO / folder / path
            assert target.exists(), f"README layout names {path}, which is not in the tree"
            named.append(target.relative_to(REPO).as_posix())
    mentioned = " ".join(named)
    for part in sorted((REPO / "pipeline").iterdir()):
        if part.name.startswith("__"):
            continue
        assert part.name in mentioned, f"pipeline/{part.name} is missing from the README's layout table"


def test_every_dataset_is_one_package():
    for name in DATASETS:
        package = REPO / "pipeline/datasets" / name
        assert (package / "__init__.py").is_file() and (package / "task.py").is_file(), name
        assert (REPO / "data/raw" / name / "README.md").is_file(), name


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
    return found


def test_no_import_circle():
    modules = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
