"""A throwaway PostgreSQL server on loopback, for the tests of the search's shared study.

Debian's server (`make services` installs it): a cluster initialised in a temporary directory,
password authentication (SCRAM) for every connection, TCP on 127.0.0.1 only at a free port,
its unix socket inside the directory, durability off (a test's data need not survive a crash).
The server refuses to run as root: where the tests run as root, the cluster belongs to the
`postgres` system user and its commands run as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port

USER = "optuna"
DATABASE = "optuna"
PASSWORD = "p@ss:w/rd"
"""Every character SQLAlchemy's URL syntax gives a meaning to ('@', ':', '/'): the URL must
carry it percent-encoded. A random tail follows it in each server's password, so that finding
it in an output can only mean it leaked."""
SERVER_USER = "postgres"  # Debian's system user of the server: who runs it where we are root
START_TIMEOUT_S = 30


def server_bin() -> Path | None:
    """The directory of the newest PostgreSQL server installed (Debian keeps each version in
    /usr/lib/postgresql/<version>/bin), or of the one on PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        return Path(newest).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@contextlib.contextmanager
def postgres_server(tmp_path: Path) -> Iterator[str]:
    """A running server with one database owned by a password-protected, non-superuser role; its
    SQLAlchemy URL (postgresql://USER:PASSWORD@127.0.0.1:PORT/DB, the password percent-encoded).
    Stopped and deleted on the way out, whatever happened; its log is left in
    `tmp_path`/postgres.log (created if need be) to read when a test fails."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server (initdb) installed: `make services` installs it")
    as_server = []  # how the server's commands run: as we are, or as its system user
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(
                f"running as root and no {SERVER_USER!r} user to run PostgreSQL as (the server "
                "refuses root): `make services` installs the server and its user"
            )
        as_server = ["runuser", "-u", SERVER_USER, "--"]
    # not in tmp_path: where we are root, pytest's base directory is closed to the server's
    # user; and a unix socket's path must stay under 108 bytes
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    data, sockets = root / "data", root / "sockets"
    admin_password, password = secrets.token_hex(16), f"{PASSWORD}-{secrets.token_hex(4)}"

    def run(*command: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*as_server, *map(str, command)], cwd=root, capture_output=True, text=True,
            timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"},
        )  # fmt: skip
        if result.returncode != 0:
            log = root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{Path(command[0]).name} exited {result.returncode}:\n{result.stdout}"
                f"{result.stderr}{tail}"
            )
        return result

    started = False
    try:
        sockets.mkdir()
        (root / "pwfile").write_text(admin_password + "\n")
        if owner is not None:
            for path in (root, sockets, root / "pwfile"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        run(
            bin_dir / "initdb", "-D", data, "-U", "postgres", "--pwfile", root / "pwfile",
            "-A", "scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        (root / "pwfile").unlink()
        for attempt in range(3):  # another process may take the free port before the server
            port = free_port()
            with (data / "postgresql.conf").open("a") as conf:  # the last setting wins
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                    f"unix_socket_directories = '{sockets}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                )
            try:
                run(
                    bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w",
                    "-t", START_TIMEOUT_S, "start", timeout=START_TIMEOUT_S + 10,
                )  # fmt: skip
                started = True
                break
            except RuntimeError:
                if attempt == 2 or "could not bind" not in (root / "server.log").read_text():
                    raise
        create_role(port, admin_password, password)
        quoted = urllib.parse.quote(password, safe="")
        yield f"postgresql://{USER}:{quoted}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            stop(bin_dir, data, as_server, root)
        if (root / "server.log").exists():
            tmp_path.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "server.log", tmp_path / "postgres.log")
        shutil.rmtree(root, ignore_errors=True)


def create_role(port: int, admin_password: str, password: str) -> None:
    """The role that owns the study's database: a login, no superuser (as a team's would be)."""
    import psycopg
    from psycopg import sql

    admin = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": admin_password}
    with psycopg.connect(**admin, dbname="postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(USER), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DATABASE), sql.Identifier(USER)
            )
        )


def stop(bin_dir: Path, data: Path, as_server: list[str], root: Path) -> None:
    """`pg_ctl stop -m fast`; the postmaster killed if that fails (it is ours: its pid is in
    the cluster's postmaster.pid)."""
    result = subprocess.run(
        [*as_server, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    pid_file = data / "postmaster.pid"
    if result.returncode != 0 and pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
