"""make exps: failed experiments named apart, with the params they tried and no scores."""

from __future__ import annotations

from fashion_mnist_mlp.tools.exps import failed_experiments


def row(rev: str, params: dict, name: str | None = None, state: str | None = None) -> dict:
    data = {"params": {"params.yaml": {"data": params}}, "metrics": {"metrics/test.json": {
        "data": {"swa": {"accuracy": 0.5817}}}}}  # fmt: skip
    return {"rev": rev, "name": name, "data": data, "state": state}


def show(*experiments: tuple[str, str, dict]) -> list[dict]:
    """`dvc exp show --json` rows: a baseline and its experiments (name, executor state, params)."""
    base = {"train": {"lr": 0.004, "optimizer": "adamw"}, "model": {"hidden": [512, 512]}}
    baseline = row("abc1234", base)
    baseline["experiments"] = [
        {"name": name, "executor": {"state": state}, "revs": [row(f"{i}" * 40, params, name)]}
        for i, (name, state, params) in enumerate(experiments)
    ]
    return [baseline]


def test_only_failed_experiments_are_listed_with_the_params_they_changed() -> None:
    rows = show(
        ("good", "success", {"train": {"lr": 0.01, "optimizer": "adamw"}}),
        (
            "bad-lr",
            "failed",
            {"train": {"lr": 0.05, "optimizer": "adamw"}, "model": {"hidden": [256]}},
        ),
        (
            "same",
            "failed",
            {"train": {"lr": 0.004, "optimizer": "adamw"}, "model": {"hidden": [512, 512]}},
        ),
        ("running", "running", {"train": {"lr": 0.02, "optimizer": "adamw"}}),
    )
    assert list(failed_experiments(rows)) == [
        ("bad-lr", ["train.lr=0.05", "model.hidden=[256]"]),
        ("same", []),
    ]


def test_a_failed_experiment_without_a_name_is_named_by_its_commit() -> None:
    rows = show(("x", "failed", {"train": {"lr": 1}}))
    rows[0]["experiments"][0]["revs"][0]["name"] = None
    assert list(failed_experiments(rows)) == [("0000000", ["train.lr=1"])]
