"""`make exps`: the experiments side by side, in a table that fits the terminal.

Built from `dvc exp show --json`: per experiment the scores that matter (SCORES) and the params
that differ between the rows shown, nothing else (DVC's own table has some 40 columns, 2,000+
characters wide: a terminal shows its first three). Params that do not fit as columns are
listed as key=value beside each row instead. The workspace is a row only where it differs from
its commit.

A failed queued experiment has no outputs of its own; `dvc exp show` fills its row from the
dvc.lock it was queued with, so its scores are its baseline's. The table leaves it out, and a
list below names each failed experiment, the params it tried and how to see why it failed.

    python -m fashion_mnist_mlp.tools.exps [dvc exp show options: -A, -n N, --rev REV ...]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fashion_mnist_mlp.config.paths import (
    CALIBRATION_METRICS,
    PARAMS_FILE,
    TEST_METRICS,
    TEST_METRICS_KEYS,
)

SCORES = [
    ("trained", "test acc", TEST_METRICS, f"{TEST_METRICS_KEYS['train']}.accuracy"),
    ("SWA", "test acc", TEST_METRICS, f"{TEST_METRICS_KEYS['swa']}.accuracy"),
    ("SWA", "test F1", TEST_METRICS, f"{TEST_METRICS_KEYS['swa']}.f1_macro"),
    ("exported", "val acc", CALIBRATION_METRICS, "validation.accuracy"),
]
"""(model, score: the column's two header lines, metrics file, key in it) of each score."""
LEGEND = (
    "test: the test set's accuracy and macro F1 of the trained and the SWA model "
    f"({TEST_METRICS}); val acc: the exported model's validation accuracy "
    f"({CALIBRATION_METRICS}), make search's objective. Every metric: dvc exp show"
)
GAP = "  "
DEFAULT_WIDTH = 120  # where the output is no terminal (a pipe, a file)


@dataclass
class Row:
    name: str
    params: dict[str, Any]
    scores: list[float | None]
    baseline: dict[str, Any] | None = None
    """The params of the commit an experiment ran from; None for a commit's own row."""


def main(argv: list[str]) -> int:
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", *argv],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        sys.stderr.write(shown.stderr)
        return shown.returncode
    data = json.loads(shown.stdout)
    width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    print("\n".join(render(table_rows(data), width)))
    failed = list(failed_experiments(data))
    if failed:
        print("\nFailed (no scores of their own; `dvc queue logs <name>` says why):")
        for name, changes in failed:
            text = f"{name}  {' '.join(changes) or '(the baseline params)'}"
            print(textwrap.fill(text, width, initial_indent="  ", subsequent_indent="    "))
    return 0


def table_rows(data: list[dict]) -> list[Row]:
    """The rows of `dvc exp show --json`: each commit, then its experiments (failed ones left
    out), the workspace first where it differs from its commit."""
    rows: list[Row] = []
    commits = [c for c in data if c["rev"] != "workspace"]
    for commit in commits:
        base = _row(commit.get("name") or commit["rev"][:7], commit)
        rows.append(base)
        experiments = [e for e in commit.get("experiments") or [] if _state(e) != "failed"]
        revs = [(exp, rev) for exp in experiments for rev in exp["revs"]]
        for i, (exp, rev) in enumerate(revs):
            branch = "└── " if i == len(revs) - 1 else "├── "
            name = rev.get("name") or exp.get("name") or rev["rev"][:7]
            row = _row(branch + name, rev, base.params)
            if (state := _state(exp)) in ("queued", "running"):  # scores still its baseline's
                row.name, row.scores = f"{row.name} ({state})", [None] * len(SCORES)
            rows.append(row)
    workspace = next((c for c in data if c["rev"] == "workspace"), None)
    if workspace is not None:
        row = _row("workspace", workspace, rows[0].params if rows else None)
        if not rows or (row.params, row.scores) != (rows[0].params, rows[0].scores):
            rows.insert(0, row)
    return rows


def _state(experiment: dict) -> str | None:
    return (experiment.get("executor") or {}).get("state")


def _row(name: str, rev: dict, baseline: dict[str, Any] | None = None) -> Row:
    data = rev.get("data") or {}
    metrics = data.get("metrics") or {}
    scores = [_number(metrics, str(file), key) for _, _, file, key in SCORES]
    return Row(name, _flat_params(rev), scores, baseline)


def _number(metrics: dict, file: str, key: str) -> float | None:
    value: Any = (metrics.get(file) or {}).get("data")
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def varying(rows: list[Row]) -> list[str]:
    """The params whose values differ between the rows, in params.yaml's order."""
    keys = dict.fromkeys(key for row in rows for key in row.params)
    return [key for key in keys if len({_shown(row.params.get(key)) for row in rows}) > 1]


def render(rows: list[Row], width: int) -> list[str]:
    """The table: scores, then the params that differ as columns, or where they do not fit in
    `width`, as key=value beside each row (a commit's: all of them; an experiment's: those that
    differ from its commit's), wrapped; then the legend."""
    keys = varying(rows)
    header = [["Experiment", *(model for model, _, _, _ in SCORES)],
              ["", *(score for _, score, _, _ in SCORES)]]  # fmt: skip
    scores = [[row.name, *(_score(s) for s in row.scores)] for row in rows]
    params = [[_shown(row.params.get(key)) for key in keys] for row in rows]
    lines = aligned([header[0] + keys, header[1] + [""] * len(keys),
                     *(s + p for s, p in zip(scores, params, strict=True))])  # fmt: skip
    if max(map(len, lines)) > width:
        left = aligned([*header, *scores])
        room = max(width - len(left[0]) - len(GAP), 30)
        lines = [left[0] + GAP + "params that differ", left[1]]
        for text, row in zip(left[2:], rows, strict=True):
            pairs = " ".join(f"{k}={_shown(row.params.get(k))}" for k in changed(row, keys))
            wrapped = textwrap.wrap(pairs, room, break_on_hyphens=False) or [""]
            pad = " " * (len(text) + len(GAP))
            lines += [text + GAP + wrapped[0], *(pad + more for more in wrapped[1:])]
    lines = [line.rstrip() for line in lines]
    return [*lines, "", *textwrap.wrap(LEGEND, width)]


def changed(row: Row, keys: list[str]) -> list[str]:
    """`keys` for a commit's row; those whose values differ from its commit's for an
    experiment's."""
    base = row.baseline
    if base is None:
        return keys
    return [k for k in keys if _shown(row.params.get(k)) != _shown(base.get(k))]


def aligned(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [GAP.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def failed_experiments(rows: list[dict]) -> Iterator[tuple[str, list[str]]]:
    """(name, ["key=value" for each param that differs from its baseline]) of each failed
    experiment in `dvc exp show --json` rows."""
    for baseline in rows:
        base = _flat_params(baseline)
        for exp in baseline.get("experiments") or []:
            if _state(exp) != "failed":
                continue
            for rev in exp["revs"]:
                params = _flat_params(rev)
                changes = [f"{k}={_shown(v)}" for k, v in params.items() if base.get(k) != v]
                yield rev.get("name") or rev["rev"][:7], changes


def _flat_params(row: dict) -> dict[str, Any]:
    data = (row.get("data") or {}).get("params", {}).get(str(PARAMS_FILE), {}).get("data", {})
    return dict(_flatten(data))


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
