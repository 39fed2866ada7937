"""A search trial's side of the train stage: each epoch's validation accuracy goes to the
Optuna study whose worker started the run (stages/search.py), so that its pruner can stop a
trial that trails the others. Outside a search (no STAGES_TRIAL) nothing is reported.

The stage decides nothing here: the worker interrupts a pruned run as Ctrl-C would, so a
pruned trial writes no output, and one that finishes has the bytes it would have had anyway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .cli import StageError

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

TRIAL_ENV = "STAGES_TRIAL"
"""'<storage URL> <trial id>', set by the search worker for the `dvc exp run` of one trial."""


def trial_env(storage_url: str, trial_id: int) -> dict[str, str]:
    return {TRIAL_ENV: f"{storage_url} {trial_id}"}


def epoch_reporter() -> Callable[[int, float], None] | None:
    """report(epoch, validation accuracy) into the study of the search that runs this stage, or
    None outside one."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return None
    url, trial_id = spec.rsplit(" ", 1)
    try:
        storage = connect(url)
    except Exception as e:  # the study's bookkeeping must never cost the run
        print(f"train: note: cannot reach the search's study ({e}): epochs are not reported")
        return None
    warned = False

    def report(epoch: int, value: float) -> None:
        nonlocal warned
        try:
            storage.set_trial_intermediate_value(int(trial_id), epoch, value)
        except Exception as e:  # the study's bookkeeping must never cost the run
            if not warned:
                print(f"train: note: could not report epoch {epoch} to the search ({e})")
                warned = True

    return report


def connect(url: str, attempts: int = 5) -> RDBStorage:
    """The study's storage at a SQLAlchemy URL. Workers that start together race to create
    SQLite's tables; the loser retries. SQLite waits up to 60 s for another writer."""
    from optuna.storages import RDBStorage  # only a search run pays optuna's import
    from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    attempt = 0
    while True:
        attempt += 1
        try:
            return RDBStorage(url, engine_kwargs=engine)
        except (IntegrityError, OperationalError) as e:
            racing = isinstance(e, IntegrityError) or "already exists" in str(e)
            if not racing or attempt >= attempts:  # not another worker creating the tables
                raise StageError(f"cannot open the study's storage {url}: {e.args[0]}") from None
            time.sleep(0.5 * attempt)
        except ArgumentError:
            raise StageError(
                f"--storage {url!r} is not a SQLAlchemy URL: for example "
                "sqlite:///search/study.db or postgresql://user:password@host/database"
            ) from None
        except ImportError as e:
            raise StageError(
                f"--storage {url!r} needs a database driver that is not installed ({e}): "
                "uv add psycopg2-binary for PostgreSQL"
            ) from None
        except SQLAlchemyError as e:
            raise StageError(f"cannot open the study's storage {url}: {e.args[0]}") from None
