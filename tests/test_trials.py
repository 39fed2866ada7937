"""The search's storage URL may hold a password (postgresql://user:password@host/db): no
message, note or log line of the search or its trials shows it."""

from __future__ import annotations

import socket

import pytest

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.tools.trials import TRIAL_ENV, connect, epoch_reporter, hidden, masked

PASSWORD = "Zq7Wv9xK"


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then closed at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable(password: str = PASSWORD) -> str:
    """PostgreSQL on a closed port: the driver is missing here (SQLAlchemy's ImportError), or
    where one is installed, the connection is refused."""
    return f"postgresql://alice:{password}@127.0.0.1:{closed_port()}/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://alice:{PASSWORD}@db-host:5432/optuna", "postgresql://alice:***@db-host:5432/optuna"),
        ("postgresql://alice:Zq7%40Wv@db-host/optuna", "postgresql://alice:***@db-host/optuna"),
        (f"postgresql://db-host/optuna?password={PASSWORD}", "postgresql://db-host/optuna?password=***"),
        # not a URL SQLAlchemy reads (a space in the scheme): masked between ':' and '@'
        (f"postgres ql://alice:{PASSWORD}@db-host/optuna", "postgres ql://alice:***@db-host/optuna"),
        ("sqlite:////tmp/a@b/study.db", "sqlite:////tmp/a@b/study.db"),  # no password: as given
    ],
)  # fmt: skip
def test_a_storage_url_is_shown_with_its_password_masked(url: str, shown: str) -> None:
    assert masked(url) == shown


def test_a_message_quoting_the_url_or_its_password_hides_both() -> None:
    url = "postgresql://alice:Zq7%40Wv@db-host/optuna"
    message = f"cannot connect to {url}: password authentication failed (Zq7@Wv, Zq7%40Wv)"
    assert hidden(message, url) == (
        "cannot connect to postgresql://alice:***@db-host/optuna: password authentication "
        "failed (***, ***)"
    )


@pytest.mark.parametrize(
    ("password", "written"),
    [
        (PASSWORD, [PASSWORD]),
        ("Zq7%40Wv9x", ["Zq7%40Wv9x", "Zq7@Wv9x"]),  # percent-encoded: neither form shows
        ("Zq{x9Wv}K", ["Zq{x9Wv}K", "x9Wv"]),  # optuna formats the URL: a KeyError quoted x9Wv
    ],
)
def test_a_storage_the_search_cannot_open_is_named_without_its_password(
    password: str, written: list[str]
) -> None:
    url = unreachable(password)
    with pytest.raises(StageError) as refused:
        connect(url)
    message = str(refused.value)
    assert not [w for w in written if w in message], message
    assert f"postgresql://alice:***@127.0.0.1:{url.split(':')[-1]}" in message, message
    assert "uv add 'psycopg[binary]'" in message or "Check that the database" in message


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{PASSWORD}@127.0.0.1:54x2/db",  # a port that is not a number
        f"postgres ql://alice:{PASSWORD}@127.0.0.1/db",
    ],
)
def test_a_storage_url_sqlalchemy_cannot_read_is_named_without_its_password(url: str) -> None:
    with pytest.raises(StageError, match="is not a SQLAlchemy URL: for example") as refused:
        connect(url)
    assert PASSWORD not in str(refused.value) and "alice:***@127.0.0.1" in str(refused.value)


def test_a_trial_that_cannot_reach_the_study_says_so_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """train prints the note, and the search worker writes train's output to search/logs/."""
    monkeypatch.setenv(TRIAL_ENV, f"{unreachable()} 7")
    assert epoch_reporter() is None  # train goes on, reporting nothing
    out = capsys.readouterr().out
    assert out.startswith("train: note: cannot reach the search's study (--storage "), out
    assert PASSWORD not in out and "alice:***@127.0.0.1:" in out, out
