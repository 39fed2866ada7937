"""`make exps`: DVC's experiments table, with failed experiments listed apart and scoreless.

A failed queued experiment has no outputs of its own; `dvc exp show` fills its row
from the dvc.lock it was queued with, so its scores are its baseline's. The table hides those
rows (`--hide-failed`), and a list below names each failed experiment, the params it tried and
how to see why it failed.

    python -m fashion_mnist_mlp.tools.exps [dvc exp show options]
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from fashion_mnist_mlp.config.paths import PARAMS_FILE


def main(argv: list[str]) -> int:
    table = subprocess.run(["dvc", "exp", "show", "--no-pager", "--hide-failed", *argv])
    if table.returncode != 0:
        return table.returncode
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True
    )
    failed = list(failed_experiments(json.loads(shown.stdout)))
    if failed:
        print("\nFailed (no scores of their own; `dvc queue logs <name>` says why):")
        for name, changes in failed:
            print(f"  {name}  {' '.join(changes) or '(the baseline params)'}")
    return 0


def failed_experiments(rows: list[dict]) -> Iterator[tuple[str, list[str]]]:
    """(name, ["key=value" for each param that differs from its baseline]) of each failed
    experiment in `dvc exp show --json` rows."""
    for baseline in rows:
        base = _flat_params(baseline)
        for exp in baseline.get("experiments") or []:
            if (exp.get("executor") or {}).get("state") != "failed":
                continue
            for rev in exp["revs"]:
                params = _flat_params(rev)
                changes = [f"{k}={v}" for k, v in params.items() if base.get(k) != v]
                yield rev.get("name") or rev["rev"][:7], changes


def _flat_params(row: dict) -> dict[str, Any]:
    data = (row.get("data") or {}).get("params", {}).get(str(PARAMS_FILE), {}).get("data", {})
    return dict(_flatten(data))


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), json.dumps(value) if isinstance(value, list) else value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
