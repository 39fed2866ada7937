"""make exps: a table that fits the terminal (the scores that matter, the params that differ),
failed experiments named apart, with the params they tried and no scores. Built here from rows
shaped as `dvc exp show --json` gives them; tests/e2e/test_experiments.py runs it on real ones."""

from __future__ import annotations

from fashion_mnist_mlp.tools.exps import failed_experiments, render, table_rows

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
    lines = render(table_rows(show(("wide", None, wide), workspace=with_train(lr=0.3))), 80)
    assert max(map(len, lines)) <= 80
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
