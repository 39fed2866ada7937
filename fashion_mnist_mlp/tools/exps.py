"""`make exps`: the experiments side by side, in a table that fits the terminal.

Built from `dvc exp show --json`: per experiment the scores that matter (SCORES) and the params
that differ between the rows shown, nothing else (DVC's own table has some 40 columns, 2,000+
characters wide: a terminal shows its first three). Params that do not fit as columns are
listed as key=value beside each row instead, or where the terminal is too narrow for that too,
on indented lines below it. The workspace is a row only where it differs from its commit.

A failed queued experiment has no outputs of its own; `dvc exp show` fills its row from the
dvc.lock it was queued with, so its scores are its baseline's. The table leaves it out, and a
list below names each failed experiment, the params it tried and how to see why it failed.

    python -m fashion_mnist_mlp.tools.exps [-A] [-a] [-T] [--rev REV ...] [-n N]

Those are `dvc exp show`'s options that select the experiments; others (--csv, --md, --sort-by
...) shape DVC's own table, which this one replaces, and are refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from fashion_mnist_mlp.cli import StageError, run_stage
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
INDENT = "    "  # params on their own lines, below their row
MIN_ROOM = 30  # the least width beside the scores worth listing params in
MIN_NAME = 12  # names are cut to no less to fit a narrow terminal
CUT = "…"
DEFAULT_WIDTH = 120  # where the output is no terminal (a pipe, a file)


@dataclass
class Row:
    name: str
    params: dict[str, Any]
    scores: list[float | None]
    baseline: dict[str, Any] | None = None
    """The params of the commit an experiment ran from; None for a commit's own row."""


def main(argv: list[str] | None = None) -> None:
    args = selection(sys.argv[1:] if argv is None else argv)
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", *args],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        raise StageError(f"dvc exp show {' '.join(args)} failed:\n{shown.stderr.strip()}")
    data = json.loads(shown.stdout)
    width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    print("\n".join(render(table_rows(data), width)))
    failed = list(failed_experiments(data))
    if failed:
        print("\nFailed (no scores of their own; `dvc queue logs <name>` says why):")
        for name, changes in failed:
            first = f"  {cut(name, width - len(INDENT))}  "
            lines = packed(changes or ["(the baseline params)"], width, first, INDENT)
            print("\n".join(line.rstrip() for line in lines))


def selection(argv: list[str]) -> list[str]:
    """`argv`, where it holds only `dvc exp show`'s options that select experiments; the others
    shape DVC's own table (--csv, --md, --sort-by ...), which is not the one shown here."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-A", "--all-commits", action="store_true")
    parser.add_argument("-a", "--all-branches", action="store_true")
    parser.add_argument("-T", "--all-tags", action="store_true")
    parser.add_argument("--rev", action="append")
    parser.add_argument("-n", "--num", type=int)
    takes = "dvc exp show's options that select experiments: -A, -a, -T, --rev REV, -n N"
    try:
        _, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise StageError(f"make exps ARGS {' '.join(argv)}: {e} (it takes {takes})") from None
    if unknown:
        raise StageError(
            f"make exps ARGS {' '.join(unknown)}: it takes only {takes}. For DVC's own table, "
            "its CSV or markdown, run dvc exp show itself (e.g. uv run dvc exp show --csv)"
        )
    return argv


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
    `width`, as key=value pairs (a commit's: all of them; an experiment's: those that differ
    from its commit's) beside each row, or below it where even that leaves under MIN_ROOM
    columns; then the legend. No line is wider than `width` (for any down to some 50)."""
    keys = varying(rows)
    header = [["Experiment", *(model for model, _, _, _ in SCORES)],
              ["", *(score for _, score, _, _ in SCORES)]]  # fmt: skip
    scores = [[row.name, *(_score(s) for s in row.scores)] for row in rows]
    params = [[_shown(row.params.get(key)) for key in keys] for row in rows]
    lines = aligned([header[0] + keys, header[1] + [""] * len(keys),
                     *(s + p for s, p in zip(scores, params, strict=True))])  # fmt: skip
    if max(map(len, lines)) > width:
        left = aligned([*header, *fit_names(scores, header, width)])
        pairs = [[f"{k}={_shown(row.params.get(k))}" for k in changed(row, keys)] for row in rows]
        if width - len(left[0]) - len(GAP) >= MIN_ROOM:  # beside each row
            lines = [left[0] + GAP + "params that differ", left[1]]
            for text, items in zip(left[2:], pairs, strict=True):
                lines += packed(items, width, text + GAP, " " * len(text + GAP))
        else:  # below each row, indented
            lines = [*left[:2], INDENT + "params that differ"]
            for text, items in zip(left[2:], pairs, strict=True):
                lines += [text, *(packed(items, width, INDENT, INDENT) if items else [])]
    lines = [line.rstrip() for line in lines]
    return [*lines, "", *textwrap.wrap(LEGEND, width)]


def fit_names(scores: list[list[str]], header: list[list[str]], width: int) -> list[list[str]]:
    """`scores` with the names (its first column) cut to fit `width` beside the scores, down to
    MIN_NAME characters."""
    over = len(aligned([*header, *scores])[0]) - width
    if over <= 0:
        return scores
    room = max(max(len(row[0]) for row in scores) - over, MIN_NAME)
    return [[cut(row[0], room), *row[1:]] for row in scores]


def packed(items: list[str], width: int, first: str, indent: str) -> list[str]:
    """`items` space-separated on lines of at most `width`, the first line after `first`, the
    others after `indent`; never split, an item too long for a line is cut instead."""
    lines, filled = [first], False
    for item in items:
        item = cut(item, width - len(indent))
        gap = " " if filled else ""
        if len(lines[-1]) + len(gap) + len(item) > width:
            lines.append(indent)
            gap = ""
        lines[-1] += gap + item
        filled = True
    return lines


def cut(text: str, room: int) -> str:
    """`text`, or its first `room` characters ending in CUT where it is longer."""
    return text if len(text) <= room else text[: room - len(CUT)] + CUT


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
    """`value` as -S would take it, unambiguous in a line of key=value pairs: a string bare
    where that reads back as the same string with no space in it ("adamw"), else in double
    quotes ("0.5 ** epoch", "true"); anything else as compact JSON ([512,512], null)."""
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass  # not plain YAML ("@x", "`x"): quoted
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
    run_stage(main, check_params=False)
