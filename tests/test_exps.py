"""make exps: a table that fits the terminal (the scores that matter, the params that differ),
failed experiments named apart, with the params they tried and no scores. Built here from rows
shaped as `dvc exp show --json` gives them; tests/e2e/test_experiments.py runs it on real ones."""

from __future__ import annotations

import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import pytest

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.tools.exps import INDENT, failed_experiments, render, selection, table_rows

BASE = {"train": {"lr": 0.004, "optimizer": "adamw"}, "model": {"hidden": [512, 512]}}


def row(rev: str, params: dict, name: str | None = None, accuracy: float = 0.5817) -> dict:
    data = {"params": {"params.yaml": {"data": params}}, "metrics": {
        "metrics/test.json": {"data": {"swa_model": {"accuracy": accuracy, "f1_macro": 0.5}}},
        "metrics/calibration.json": {"data": {"validation": {"accuracy": 0.6}}}}}  # fmt: skip
    return {"rev": rev, "name": name, "data": data}


def show(*experiments: tuple[str, str | None, dict], workspace: dict | None = None) -> list[dict]:
    """`dvc exp show --json` rows: the workspace, a baseline and its experiments (name,
    executor state, params)."""
    baseline = row("abc1234" * 5 + "abcde", BASE, "main")
    baseline["experiments"] = [
        {"name": name, "executor": {"state": state} if state else None,
         "revs": [row(f"{i}" * 40, params, name, accuracy=0.1 * i)]}
        for i, (name, state, params) in enumerate(experiments)
    ]  # fmt: skip
    return [row("workspace", workspace or BASE), baseline]


def with_train(**changes: object) -> dict:
    return {**BASE, "train": {**BASE["train"], **changes}}


def test_only_failed_experiments_are_listed_with_the_params_they_changed() -> None:
    rows = show(
        ("good", "success", with_train(lr=0.01)),
        ("bad-lr", "failed", {"train": {"lr": 0.05, "optimizer": "adamw"}, "model": {"hidden": [256]}}),
        ("same", "failed", BASE),
        ("running", "running", with_train(lr=0.02)),
    )  # fmt: skip
    assert list(failed_experiments(rows)) == [
        ("bad-lr", ["train.lr=0.05", "model.hidden=[256]"]),
        ("same", []),
    ]


def test_a_failed_experiment_without_a_name_is_named_by_its_commit() -> None:
    rows = show(("x", "failed", {"train": {"lr": 1}}))
    rows[1]["experiments"][0]["revs"][0]["name"] = None
    assert list(failed_experiments(rows)) == [("0000000", ["train.lr=1"])]


def test_the_params_that_differ_are_columns_beside_the_scores() -> None:
    lines = render(table_rows(show(("sgd", None, with_train(optimizer="sgd")),
                                   ("sgd-05", None, with_train(optimizer="sgd", lr=0.05)))), 120)  # fmt: skip
    header, _, main, sgd, sgd05 = lines[:5]
    assert header.split() == ["Experiment", "trained", "SWA", "SWA", "exported", "train.lr",
                              "train.optimizer"]  # fmt: skip
    assert main.split() == ["main", "-", "0.5817", "0.5000", "0.6000", "0.004", "adamw"]
    assert sgd.split() == ["├──", "sgd", "-", "0.0000", "0.5000", "0.6000", "0.004", "sgd"]
    assert sgd05.split()[-2:] == ["0.05", "sgd"] and sgd05.startswith("└── sgd-05")
    assert "workspace" not in "\n".join(lines)  # the same as its commit
    assert max(map(len, lines)) <= 120


def test_params_that_do_not_fit_as_columns_are_listed_beside_each_row() -> None:
    many = {f"key_number_{i}": i for i in range(12)}
    wide = {**BASE, "train": {**BASE["train"], **many}}
    lines = render(table_rows(show(("wide", None, wide), workspace=with_train(lr=0.3))), 100)
    assert max(map(len, lines)) <= 100
    text = "\n".join(lines)
    assert "params that differ" in lines[0] and "train.key_number_11=11" in text
    workspace, main, experiment = (next(i for i, line in enumerate(lines) if line.startswith(n))
                                   for n in ("workspace", "main", "└── wide"))  # fmt: skip
    # an experiment lists what it changed; its commit, every param that differs
    assert "train.lr=0.3" in lines[workspace] and "train.lr=0.004" in lines[main]
    assert "train.lr" not in "".join(lines[experiment : experiment + 3])


def test_a_queued_or_running_experiment_shows_no_scores_yet() -> None:
    lines = render(table_rows(show(("later", "queued", with_train(lr=0.2)))), 120)
    queued = next(line for line in lines if "later" in line)
    assert queued.split()[1:7] == ["later", "(queued)", "-", "-", "-", "-"]


def crowded() -> list[dict]:
    """A search's long names and a dozen params that differ: the score block alone is some 60
    columns (review: 82-85 character lines in an 80-column terminal)."""
    many = {f"option_{i}": f"value {i}" for i in range(12)}
    return show(
        ("search-12", "queued", with_train(lr=0.01, **many)),
        ("a-really-quite-long-experiment-name", None, with_train(optimizer="sgd", lr=0.05)),
        ("search-13", None, {**BASE, "model": {"hidden": [256, 256]}}),
        workspace=with_train(lr=0.3),
    )


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_every_line_fits_the_width_and_keeps_every_param(width: int) -> None:
    lines = render(table_rows(crowded()), width)
    assert max(map(len, lines)) <= width, "\n".join(lines)
    text = "\n".join(lines)
    assert all(f'train.option_{i}="value {i}"' in text for i in range(12)), text
    assert "model.hidden=[256,256]" in text and "train.lr=0.3" in text


def test_params_go_below_each_row_where_too_little_room_is_left_beside_it() -> None:
    lines = render(table_rows(crowded()), 80)
    search = next(i for i, line in enumerate(lines) if line.startswith("├── search-12 (queued)"))
    below = list(takewhile(lambda line: line.startswith(INDENT), lines[search + 1 :]))
    assert lines[search].split()[3:] == ["-", "-", "-", "-"]  # the scores, no params beside
    assert below[0].split()[0] == "train.lr=0.01" and len(below) > 1
    assert "option_11" in below[-1] and lines[search + 1 + len(below)].startswith("├── a-really")


def test_string_values_are_quoted_where_bare_they_would_be_ambiguous() -> None:
    formula = with_train(formula="0.5 ** epoch", flag="true", optimizer="sgd")
    for width in (200, 80):  # as columns, then as key=value pairs
        text = "\n".join(render(table_rows(show(("lambda", None, formula))), width))
        assert '"0.5 ** epoch"' in text and '"true"' in text, text
        assert "sgd" in text and '"sgd"' not in text  # a plain word stays bare
    failed = show(("lambda", "failed", formula))
    assert list(failed_experiments(failed)) == [
        ("lambda", ["train.optimizer=sgd", 'train.formula="0.5 ** epoch"', 'train.flag="true"'])
    ]


def test_a_value_too_long_for_a_line_is_cut_with_a_marker_not_split() -> None:
    long = with_train(formula=" + ".join(f"0.{i} ** epoch" for i in range(30)))
    lines = render(table_rows(show(("long", None, long))), 80)
    (at,) = [i for i, line in enumerate(lines) if 'train.formula="' in line]
    assert len(lines[at]) == 80 and lines[at].endswith("…"), lines[at]
    assert "** epoch" not in lines[at + 1]  # no rest of it on the next line


@pytest.mark.parametrize("args", [["--csv"], ["--md"], ["--json"], ["--sort-by", "train.lr"]])
def test_make_exps_refuses_options_for_dvcs_own_table(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fashion_mnist_mlp.tools.exps", *args],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: make exps ARGS {' '.join(args)}: ")
    assert "select experiments" in result.stderr and "Traceback" not in result.stderr


def test_make_exps_passes_the_options_that_select_experiments() -> None:
    args = ["-A", "-a", "-T", "--rev", "HEAD~1", "--rev=main", "-n", "-1", "--num=3"]
    assert selection(args) == args
    with pytest.raises(StageError, match="argument -n/--num: invalid int value: 'x'"):
        selection(["-n", "x"])
