"""The search's study: its sampler's seed per worker and per start, one space per study, and a
storage password that no message shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.tools.search import open_study
from fashion_mnist_mlp.tools.space import Space

from .conftest import Workdir
from .test_trials import PASSWORD, unreachable

SPACE = {
    "sampler": "random",
    "seed": 0,
    "pruner": "median",
    "startup_trials": 1,
    "warmup_epochs": 1,
    "params": {"train.lr": {"low": 0.001, "high": 0.01, "log": True}},
}


def asked(storage: str, worker: int, space: dict = SPACE, trials: int = 2) -> list[float]:
    study = open_study("s", storage, Space.model_validate(space), worker)
    values = []
    for _ in range(trials):
        trial = study.ask(Space.model_validate(space).distributions())
        values.append(trial.params["train.lr"])
        study.tell(trial, 0.5)
    return values


def test_workers_and_restarts_ask_for_new_values_and_a_fresh_study_repeats_itself(
    tmp_path: Path,
) -> None:
    first = asked(f"sqlite:///{tmp_path / 'a.db'}", worker=0)
    other_worker = asked(f"sqlite:///{tmp_path / 'b.db'}", worker=1)
    restarted = asked(f"sqlite:///{tmp_path / 'a.db'}", worker=0)  # the same study, again
    again = asked(f"sqlite:///{tmp_path / 'c.db'}", worker=0)  # a new study, same seed
    assert len({*first, *other_worker, *restarted}) == 6
    assert again == first


def test_a_study_refuses_another_search_space(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'a.db'}"
    asked(storage, worker=0)
    wider = {**SPACE, "params": {"train.lr": {"low": 0.0001, "high": 0.01, "log": True}}}
    with pytest.raises(StageError, match="was searched with another search space"):
        asked(storage, worker=0, space=wider)
    asked(storage, worker=0, space={**SPACE, "seed": 5})  # the sampler's settings may change


@pytest.mark.parametrize("plots", [False, True], ids=["search", "plots"])
def test_the_search_names_a_storage_it_cannot_open_without_its_password(
    tmp_path: Path, plots: bool
) -> None:
    work = Workdir.with_project_params(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    url = unreachable()
    args = ("--storage", url, "--space", "space.yaml", "--trials", "1")
    result = work.run("search", args=(*args, "--plots", "plots") if plots else args)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, out
    assert result.stderr.startswith("error: --storage 'postgresql://alice:***@127.0.0.1:"), out
    assert "uv add 'psycopg[binary]'" in out or "Check that the database" in out, out
    assert PASSWORD not in out
    assert not [
        f for f in tmp_path.rglob("*") if f.is_file() and PASSWORD.encode() in f.read_bytes()
    ]
