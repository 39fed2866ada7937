"""A search trial's side of the train stage: each epoch's validation accuracy goes to the
Optuna study whose worker started the run (fashion_mnist_mlp/tools/search.py), so that its pruner can stop a
trial that trails the others. Outside a search (no STAGES_TRIAL) nothing is reported.

The stage decides nothing here: the worker interrupts a pruned run as Ctrl-C would, so a
pruned trial writes no output, and one that finishes has the bytes it would have had anyway.

The storage URL may hold a password (postgresql://user:password@host/db): every message that
names the storage shows it masked (`masked`, `hidden`), as SQLAlchemy renders URLs.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from fashion_mnist_mlp.cli import StageError

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
        print(
            f"train: note: cannot reach the search's study ({hidden(str(e), url)}): epochs are "
            "not reported"
        )
        return None
    warned = False

    def report(epoch: int, value: float) -> None:
        nonlocal warned
        try:
            storage.set_trial_intermediate_value(int(trial_id), epoch, value)
        except Exception as e:  # the study's bookkeeping must never cost the run
            if not warned:
                print(
                    f"train: note: could not report epoch {epoch} to the search "
                    f"({hidden(str(e), url)})"
                )
                warned = True

    return report


def connect(url: str) -> RDBStorage:
    """The study's storage at a SQLAlchemy URL; a URL it cannot use stops with one message that
    shows it masked."""
    from sqlalchemy.exc import ArgumentError

    try:
        with storage_errors(url):
            return _open(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StageError(
            f"--storage {masked(url)!r} is not a SQLAlchemy URL: for example "
            "sqlite:///search/study.db or postgresql://user:password@host/database"
        ) from None
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None)  # ModuleNotFoundError's
        add = f"uv add '{DRIVERS.get(missing, missing)}'" if missing else "install it (uv add)"
        raise StageError(
            f"--storage {masked(url)!r} needs a database driver that is not installed "
            f"({missing or hidden(str(e), url)}): {add}"
        ) from None


DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
"""The package of a driver module, where the names differ (SQLAlchemy 2.1's postgresql:// is
psycopg 3; postgresql+psycopg2:// is psycopg2)."""


def _open(url: str, attempts: int = 5) -> RDBStorage:
    """Workers that start together race to create SQLite's tables; the loser retries. SQLite
    waits up to 60 s for another writer."""
    from optuna.storages import RDBStorage  # only a search run pays optuna's import
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    # optuna fills {SCHEMA_VERSION} into the URL with str.format: a brace in a password would
    # stop it with a KeyError that quotes the password
    escaped = url.replace("{", "{{").replace("}", "}}")
    for attempt in range(1, attempts):
        try:
            return RDBStorage(escaped, engine_kwargs=engine)
        except (IntegrityError, OperationalError) as e:
            if not (isinstance(e, IntegrityError) or "already exists" in str(e)):
                raise  # not another worker creating the tables
            time.sleep(0.5 * attempt)
    return RDBStorage(escaped, engine_kwargs=engine)


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """The storage's errors (SQLAlchemy's, and optuna's around them) as one StageError that
    names the storage with its password masked: their messages may quote the URL. A URL
    SQLAlchemy cannot read is left to the caller."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        yield
    except ArgumentError:
        raise
    except (SQLAlchemyError, StorageInternalError) as e:
        cause = e.__cause__ if isinstance(e, StorageInternalError) and e.__cause__ else e
        reason = str(cause.args[0] if cause.args else cause).split("\n")[0]
        raise StageError(
            f"cannot use the study's storage {masked(url)}: {hidden(reason, url)}. Check that "
            "the database is reachable and the URL right, then run again: the study keeps its "
            "finished trials"
        ) from None


_USERINFO = re.compile(r"^((?:[^:/]*://)?[^:/]*:)([^@]*)@")
"""scheme://user:password@...: the password as SQLAlchemy reads it (up to the first '@')."""
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&]*)", re.IGNORECASE)


def masked(url: str) -> str:
    """The URL as it may be shown: its password as ***, as SQLAlchemy renders it, or for a URL
    SQLAlchemy cannot read, whatever stands between the user's ':' and '@'."""
    from sqlalchemy.engine import make_url

    if not _secrets(url):
        return url  # as given: SQLAlchemy would percent-encode a path's '@'
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: it may hold a password all the same
        shown = _USERINFO.sub(r"\1***@", url)
    return _without_secrets(shown, url)


def hidden(text: str, url: str) -> str:
    """`text` (a message, a log line) with the URL masked and its password as ***, wherever
    either shows."""
    return _without_secrets(text.replace(url, masked(url)), url)


def _without_secrets(text: str, url: str) -> str:
    for secret in sorted(_secrets(url), key=len, reverse=True):  # "a%40b" before "a"
        text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> set[str]:
    """The URL's passwords (after the user, or ?password=), as written and as decoded."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        if make_url(url).password is None and not _QUERY_PASSWORD.search(url):
            return set()  # e.g. sqlite:///a@b.db: nothing secret, nothing to mask
    written = set(_QUERY_PASSWORD.findall(url))
    if match := _USERINFO.match(url):
        written.add(match.group(2))
    return {s for w in written for s in (w, urllib.parse.unquote(w)) if s}
