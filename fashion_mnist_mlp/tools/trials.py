"""A search trial's side of the train stage: each epoch's validation accuracy goes to the
Optuna study whose worker started the run (fashion_mnist_mlp/tools/search.py), so that its
pruner can stop a trial that trails the others. Outside a search (no STAGES_TRIAL) nothing is
reported.

The stage decides nothing here: the worker interrupts a pruned run as Ctrl-C would, so a
pruned trial writes no output, and one that finishes has the bytes it would have had anyway.

The storage URL may hold a password (postgresql://user:password@host/db): every message that
names the storage shows it masked (`masked`, `hidden`).
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


def connect(url: str, heartbeat_s: int | None = None) -> RDBStorage:
    """The study's storage at a SQLAlchemy URL; a URL it cannot use stops with one message that
    shows it masked. With `heartbeat_s`, a running trial whose worker has sent no heartbeat for
    GRACE_HEARTBEATS of them is failed by the next worker that looks (optuna's
    fail_stale_trials) and asked again, with its values, up to MAX_RETRIES times."""
    from sqlalchemy.exc import ArgumentError

    try:
        with storage_errors(url):
            return _open(url, heartbeat_s)
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


GRACE_HEARTBEATS = 3
MAX_RETRIES = 2


def _open(url: str, heartbeat_s: int | None = None, attempts: int = 5) -> RDBStorage:
    """Workers that start together race to create the study's tables (SQLite's, PostgreSQL's);
    the loser retries. SQLite waits up to 60 s for another writer."""
    # only a search run pays optuna's import
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    heartbeat = (
        {
            "heartbeat_interval": heartbeat_s,
            "grace_period": GRACE_HEARTBEATS * heartbeat_s,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRIES
            ),
        }
        if heartbeat_s
        else {}
    )
    # optuna fills {SCHEMA_VERSION} into the URL with str.format: a brace in a password would
    # stop it with a KeyError that quotes the password
    escaped = url.replace("{", "{{").replace("}", "}}")
    for attempt in range(1, attempts):
        try:
            return RDBStorage(escaped, engine_kwargs=engine, **heartbeat)
        # SQLite says "already exists" as an OperationalError, PostgreSQL as a ProgrammingError
        except (IntegrityError, OperationalError, ProgrammingError) as e:
            if not (isinstance(e, IntegrityError) or "already exists" in str(e)):
                raise  # not another worker creating the tables
            time.sleep(0.5 * attempt)
    return RDBStorage(escaped, engine_kwargs=engine, **heartbeat)


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


SECRET_NAME = re.compile("pass|secret|token|key", re.IGNORECASE)
"""A query parameter whose name says it holds a secret (password, sslpassword, api_key, ...)."""
MIN_MASKED = 4
"""A shorter password is not looked for in free text: replacing "1" turns 10.0.0.1 into
***0.0.0.*** and shows where it stands."""


def masked(url: str) -> str:
    """The URL as it may be shown: each password (the user's, each secret query parameter's)
    as ***, found by its position; everything else as written."""
    shown, end = [], 0
    for start, stop in _secret_spans(url):
        shown += [url[end:start], "***"]
        end = stop
    return "".join([*shown, url[end:]])


def hidden(text: str, url: str) -> str:
    """`text` (a message, a log line) with the URL masked and its passwords as ***, wherever
    they show. Where a password is too short to be told from the rest of the text, the text is
    not shown at all."""
    parts = text.split(url)
    secrets = sorted(_secrets(url), key=len, reverse=True)  # "a%40b" before "a"
    if any(s in part for s in secrets if len(s) < MIN_MASKED for part in parts):
        return (
            f"the message from {masked(url)} is not shown: it may quote the password, which is "
            f"under {MIN_MASKED} characters and cannot be masked in free text; use a longer "
            "password (percent-encoded if it holds '@', '/', '?', '#' or '%'), or read the "
            "database server's log"
        )
    for secret in secrets:
        parts = [part.replace(secret, "***") for part in parts]
    return masked(url).join(parts)


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the URL's passwords stand, in order, overlaps merged."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted([*_password_span(url), *_query_spans(url)]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def _password_span(url: str) -> list[tuple[int, int]]:
    """scheme://user:password@host: the password runs from the user's ':' to the last '@'
    before the host's '/', '?' or '#' ('p@ss' is one password), or further, to the first '@',
    where SQLAlchemy reads a '/', '?' or '#' into it ('pa/ss@host' is read as pa/ss)."""
    authority = url.find("://") + 3
    colon = url.find(":", authority)
    if authority < 3 or colon < 0 or any(c in url[authority:colon] for c in "/?#@"):
        return []  # no '//', or no user: before the host (sqlite:////tmp/a@b.db)
    host_end = min([i for c in "/?#" if (i := url.find(c, authority)) >= 0] or [len(url)])
    last_at = max(url.rfind("@", colon, host_end), url.find("@", colon))
    return [(colon + 1, last_at)] if last_at > colon else []


def _query_spans(url: str) -> list[tuple[int, int]]:
    """The value of each ?name=value or &name=value whose name says secret; looked for after
    every '?' and '&', as a password holding one may shift where the query starts."""
    return [
        (m.start(2), m.end(2))
        for m in re.finditer(r"(?=[?&]([^=&]*)=([^&]*))", url)
        if SECRET_NAME.search(m.group(1))
    ]


def _secrets(url: str) -> set[str]:
    """The URL's passwords as written, decoded and as SQLAlchemy renders them, and the pieces of
    one around its '@' (SQLAlchemy reads up to the first '@' as the password, the rest as host)."""
    spans = [*_password_span(url), *_query_spans(url)]
    pieces = {p for start, stop in spans for p in (url[start:stop], *url[start:stop].split("@"))}
    decoded = {f(p) for p in pieces for f in (urllib.parse.unquote, urllib.parse.unquote_plus)}
    rendered = {f(d) for d in decoded for f in (_quote, urllib.parse.quote_plus)}
    return {s for s in pieces | decoded | rendered if s}


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe=" +")  # as SQLAlchemy's URL.render_as_string
