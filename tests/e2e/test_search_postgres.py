"""The search's study on a real PostgreSQL server (tests/e2e/postgres.py): a wrong password is one
clear error with the password masked, and workers racing to create the study's tables. Two
workers sharing a study there, every trial an experiment, the password shown nowhere:
test_search_across_machines.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from fashion_mnist_mlp.tools.trials import connect

from ..conftest import COMMITTED_PARAMS
from .conftest import Project
from .postgres import postgres_server
from .studies import assert_each_trial_is_its_experiment, leaks
from .test_search import SPACE, finish, remove_experiments, search

pytestmark = pytest.mark.e2e


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    server = tmp_path / "server"
    server.mkdir()
    with postgres_server(server) as url:
        yield url


@pytest.mark.slow
def test_a_password_in_the_url_reaches_the_trial_and_shows_nowhere(
    reproduced: Project, tmp_path: Path, postgres: str
) -> None:
    """The other way docs/search.md gives the password (the across-machines test exports
    PGPASSWORD): in the URL, percent-encoded. The trial's train stage reports its epochs through
    it, and neither the worker's output nor the trial's log shows it."""
    password = make_url(postgres).password
    assert password is not None and "@" in password and password not in postgres  # encoded
    out = finish(
        search(reproduced, tmp_path, "postgres", SPACE, "--storage", postgres, "--trials", "1")
    )
    trials = optuna.load_study(study_name="postgres", storage=postgres).get_trials()
    names = [t.user_attrs["experiment"] for t in trials if "experiment" in t.user_attrs]
    try:
        assert [t.state for t in trials] == [TrialState.COMPLETE], out
        assert_each_trial_is_its_experiment(reproduced, trials)  # its epochs reached the study
        logs = [p for p in (reproduced.path / "search" / "logs").rglob("*") if p.is_file()]
        assert f"{names[0]}.log" in {p.name for p in logs}
        texts = {"the output": out, **{str(p): p.read_text(errors="replace") for p in logs}}
        assert leaks(password, texts) == []
    finally:
        remove_experiments(reproduced, names)
    reproduced.assert_clean()


def test_a_wrong_password_is_one_error_line_with_the_password_masked(
    tmp_path: Path, postgres: str
) -> None:
    """Before any trial: the worker says why (the server's reason) and stops with exit 2; its
    message names the storage with ***, and the wrong password shows nowhere."""
    right = make_url(postgres)
    wrong_password = f"wr@ng:pa/ss-{right.password.rsplit('-', 1)[-1]}"
    wrong = right.set(password=wrong_password).render_as_string(hide_password=False)
    (tmp_path / "params.yaml").write_text(COMMITTED_PARAMS)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    project = Project(tmp_path)  # a directory with the project's params: no pipeline needed
    result = project.run(
        sys.executable, "-m", "fashion_mnist_mlp.tools.search", "--storage", wrong,
        "--space", "space.yaml", "--trials", "1", check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert result.stdout == "" and "Traceback" not in out, out
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, out
    port = right.port
    assert lines[0].startswith(
        f"error: cannot use the study's storage postgresql://optuna:***@127.0.0.1:{port}/optuna: "
    ), out
    assert 'password authentication failed for user "optuna"' in lines[0], out
    files = {str(p): p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()}
    assert leaks(wrong_password, {"the output": out, **files}) == [], out
    assert leaks(right.password, {"the output": out}) == []
    # nothing was written: the right password finds no study
    assert optuna.study.get_all_study_names(storage=postgres) == []


def test_a_worker_opens_the_study_whose_tables_another_worker_created_meanwhile(
    postgres: str,
) -> None:
    """Workers started together on an empty database race to create optuna's tables: one
    checks that a table is missing, another creates it, the first one's CREATE TABLE fails
    (PostgreSQL: DuplicateTable). Here the other worker creates them at exactly that moment;
    the worker must open the study all the same, as it does on SQLite."""
    from optuna.storages._rdb.models import BaseModel

    # the worker's transaction holds what it created so far: wait for it 10 s, not for ever
    other = sqlalchemy.create_engine(postgres, connect_args={"options": "-c lock_timeout=10s"})
    raced = []

    def another_worker_creates_them(target: object, connection: object, **kw: object) -> None:
        if not raced:  # the first check found them missing; create_all below fires this too
            raced.append(True)
            BaseModel.metadata.create_all(other)

    # first: before the worker's own enum types, which it creates in this event too
    sqlalchemy.event.listen(
        BaseModel.metadata, "before_create", another_worker_creates_them, insert=True
    )
    try:
        storage = connect(postgres)
    finally:
        sqlalchemy.event.remove(BaseModel.metadata, "before_create", another_worker_creates_them)
        other.dispose()
    assert raced  # the race happened
    study = optuna.create_study(study_name="raced", storage=storage)
    assert optuna.study.get_all_study_names(storage=postgres) == [study.study_name]
