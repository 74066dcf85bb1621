"""CI: the committed dvc.lock matches the committed code, params and raw folders.

On a fresh clone the pipeline's outputs (data/prepared, models, reports) are absent, so `dvc status` lists
them as deleted; anything else it lists (a modified code dependency, a changed param or command) means
dvc.lock was not regenerated (`dvc repro`, then commit dvc.lock) after the change.
"""
from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    proc = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"dvc status failed:\n{proc.stdout}\n{proc.stderr}")
        return 1
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    in_git = lambda path: any(f == path or f.startswith(path.rstrip("/") + "/") for f in tracked)  # noqa: E731
    problems = []
    for stage, changes in json.loads(proc.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "always changed"
                problems.append(f"{stage}: {change}")
                continue
            for kind, entries in change.items():
                if kind == "changed outs":
                    continue
                for path, state in (entries.items() if isinstance(entries, dict) else [(entries, "")]):
                    if kind == "changed deps" and state == "deleted" and not in_git(path):
                        continue  # an output of an earlier stage, not built on a fresh clone
                    problems.append(f"{stage}: {kind}: {path} {state}".rstrip())
    if problems:
        print("dvc.lock does not match the committed code and params (run `dvc repro` and commit dvc.lock):")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    print("dvc.lock matches the code and params: no modified dependency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
