"""The search's storage URL may hold a password (postgresql://user:password@host/db): no
message, note or log line of the search or its trials shows it."""

from __future__ import annotations

import socket
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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
        # a raw '@' in the password: all of it up to the host's '@'
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
        # a raw '/': SQLAlchemy reads the password up to the '@'
        ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://host/db?sslpassword=topsecret", "postgresql://host/db?sslpassword=***"),
        ("postgresql://u@host/db?password=qq", "postgresql://u@host/db?password=***"),
        ("mysql://host/db?charset=utf8&API_Token=t0k&x=1", "mysql://host/db?charset=utf8&API_Token=***&x=1"),
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


def test_a_password_too_short_to_mask_in_free_text_withholds_the_message() -> None:
    """Replacing "1" wherever it shows would garble the message and show where it stands."""
    url = "postgresql://u:1@10.0.0.1/db"
    message = 'could not connect to server at "10.0.0.1", port 5432: timeout 1 s'
    shown = hidden(f"{message} ({url})", url)
    assert shown.startswith("the message from postgresql://u:***@10.0.0.1/db is not shown"), shown
    assert "use a longer password" in shown and "***0" not in shown
    assert hidden("connection refused", url) == "connection refused"  # no "1" in it: as it is


# Characters of passwords, and ones of no other text here ('{', non-ASCII): each piece of a
# password between its '@'s holds one of those, so that "never shows" can be checked.
CHARACTERS = ":/%{}?#&=+ A1é€😀"
PIECE = st.tuples(
    st.text(CHARACTERS, max_size=4), st.sampled_from("{é€😀"), st.text(CHARACTERS, max_size=4)
).map("".join)
SHAPES = {
    "userinfo": "postgresql://alice:{}@db-host:5432/optuna",
    "userinfo-and-query": "postgresql+psycopg2://alice:{}@10.0.0.1/optuna?sslmode=require",
    "query": "postgresql://alice@db-host/optuna?sslmode=require&password={}",
    "sslpassword": "postgresql://10.0.0.1/optuna?sslpassword={}",
}


def written(password: str, shape: str, encode: bool) -> str:
    """The password as a user writes it: raw, or percent-encoded (as SQLAlchemy asks) always
    where raw it would read otherwise ('@' with '/', '?' or '#' in the user part; '&' in a
    query)."""
    in_query = SHAPES[shape].endswith("={}")
    ambiguous = (
        "&" in password if in_query else "@" in password and any(c in password for c in "/?#")
    )
    if not (encode or ambiguous):
        return password
    return urllib.parse.quote_plus(password) if in_query else urllib.parse.quote(password, safe="")


def as_read(url: str) -> str:
    """What a driver's message may quote besides: the URL as SQLAlchemy renders it, and the host
    it reads (a raw '@' in the password puts what follows it there); nothing where it cannot
    read the URL (connect says so, masked)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # a raw ':' after an '@' in the password: read as the port
        return ""
    return f" ({parsed.render_as_string(hide_password=False)}) at host {parsed.host!r}"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    password=st.lists(PIECE, min_size=1, max_size=3).map("@".join),
    shape=st.sampled_from(sorted(SHAPES)),
    encode=st.booleans(),
)
def test_no_password_shows_in_the_masked_url_nor_in_a_message_quoting_it(
    password: str, shape: str, encode: bool
) -> None:
    url = SHAPES[shape].format(written(password, shape, encode))
    assert masked(url) == SHAPES[shape].format("***")
    message = f"cannot connect to {url}{as_read(url)}: password {password!r} refused (timeout 1 s)"
    shown = hidden(message, url)
    assert not [s for s in {password, *password.split("@")} if s and s in shown], shown
    assert masked(url) in shown, shown  # its host and database shown


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
    assert out.startswith(
        "train: note: cannot reach the search's study (cannot use the study's storage "
    ), out
    assert PASSWORD not in out and "alice:***@127.0.0.1:" in out, out
