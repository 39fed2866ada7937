"""A temporary git + DVC project holding a copy of this pipeline, run with real `dvc` commands."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from ..conftest import COMMITTED_PARAMS, ROOT, drop_portable_env

STAGES = ["validate", "download", "split", "train", "swa", "evaluate", "export"]
PROJECT_FILES = [
    "fashion_mnist_mlp",
    "dvc.yaml",
    "params.yaml",
    "params.schema.json",
    ".gitignore",
    ".dvcignore",
    "search/space.yaml",  # make search's default space
]
DVC_FILES = ["config", "plots"]

# A quick run on real data: 3,000 training images, 2 + 2 epochs; the 10,000 test images stay.
SMALL = {
    "split": {"subset": 3000, "val_size": 500},
    "train": {"epochs": 2, "batch_size": 128},
    "swa": {"epochs": 2, "anneal_epochs": 1},
    "evaluate": {"misclassified_grid": 3},
    "numerics": {"threads": 1},  # two pytest workers share the cores
}


def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)  # not over a null
        out[key] = merged(base[key], value) if nested else value
    return out


class Project:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = drop_portable_env({
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
        })  # fmt: skip

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=600
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def set_params(self, override: dict) -> None:
        params = self.path / "params.yaml"
        params.write_text(
            yaml.safe_dump(merged(yaml.safe_load(params.read_text()), override), sort_keys=False)
        )

    def read(self, relative: str) -> str:
        return (self.path / relative).read_text()

    def assert_clean(self) -> None:
        """The workspace holds the last commit's outputs: dvc.lock is byte for byte the
        committed one, and git sees no change (the wall-clock figures are git-ignored)."""
        assert self.read("dvc.lock") == self.run("git", "show", "HEAD:dvc.lock").stdout
        self.run("dvc", "checkout", "-q")
        status = self.run("git", "status", "--porcelain").stdout
        assert status == "", f"the workspace differs from the last commit:\n{status}"


def make_project(path: Path, override: dict) -> Project:
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, path / name)
    (path / "params.yaml").write_text(COMMITTED_PARAMS)  # not an experiment's, left in ROOT
    project = Project(path)
    project.set_params(override)
    project.run("git", "init", "-q", "-b", "main")
    project.run("dvc", "init", "-q")
    for name in DVC_FILES:  # the project's DVC config (the offline plots page) over init's
        source, target = ROOT / ".dvc" / name, path / ".dvc" / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "pipeline")
    return project


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Project:
    """A project whose pipeline ran once (`dvc repro`) and was committed with its dvc.lock.

    Shared by the end-to-end tests; each one leaves the workspace as it found it."""
    project = make_project(tmp_path_factory.mktemp("project"), SMALL)
    result = project.run("dvc", "repro")
    assert stages_run(result) == set(STAGES), result.stdout
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "reproduce the pipeline")
    return project


def lock_hashes(lock_text: str) -> dict[str, str]:
    """md5 of every out in a dvc.lock."""
    lock = yaml.safe_load(lock_text)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}


def stages_run(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The stages whose command DVC actually ran (not skipped, not restored from the cache)."""
    return {s for s in STAGES if f"> python -m fashion_mnist_mlp.stages.{s}\n" in result.stdout}


def stages_reproduced(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The stages DVC found changed: run, or restored from the run-cache of an earlier run."""
    restored = {s for s in STAGES if f"Stage '{s}' is cached - skipping run" in result.stdout}
    return stages_run(result) | restored


METRIC_FILES = {"metrics/test.json", "metrics/calibration.json", "metrics/train/metrics.json"}


def experiments(project: Project) -> dict[str, dict]:
    """Name -> {state, params, metrics, outs (their md5)} of every experiment of the current
    commit; `state` is the queue executor's ("success", "failed", ...) or, for a workspace run,
    "success"."""
    rows = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    found = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                found[rev.get("name") or exp["name"]] = {
                    "state": (exp.get("executor") or {}).get(
                        "state", "success" if not rev.get("error") else "failed"
                    ),
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": {k: v.get("data", {}) for k, v in data.get("metrics", {}).items()},
                    "outs": {k: v.get("hash") for k, v in (data.get("outs") or {}).items()},
                }
    return found


def measured(exp: dict) -> set[str]:
    """The metrics files an experiment holds values of (dvc.yaml also lists the git-ignored
    wall-clock files, which no experiment commit contains)."""
    return {path for path, data in exp["metrics"].items() if data}


def restore_workspace(project: Project) -> None:
    project.run("git", "checkout", "-q", "--", ".")
    project.run("dvc", "checkout", "-q")
    project.assert_clean()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


SSHD = Path("/usr/sbin/sshd")  # sshd refuses to start unless named by its absolute path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ssh_keygen(path: Path) -> Path:
    """A new passphrase-less ed25519 key pair at path (private) and path.pub; returns path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def wait_for_banner(server: subprocess.Popen, port: int, log: Path) -> None:
    """Until sshd on 127.0.0.1:port greets with its SSH banner (not merely until something
    listens there); fails with sshd's log if it exits or does not answer within 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"sshd exited {server.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                if conn.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"sshd did not answer on 127.0.0.1:{port} in 20 s:\n{log.read_text()}")


@contextlib.contextmanager
def ssh_server(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """An OpenSSH server of its own on 127.0.0.1 at a free port, not a system service: the
    user it lets in (whoever runs the tests, root included), its port, and the private key
    that user logs in with (its only way in: no password, no keyboard-interactive)."""
    if not SSHD.is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip(f"no OpenSSH server ({SSHD}, ssh-keygen): install it with `make services`")
    home = tmp_path / "sshd"
    home.mkdir()
    host_key = ssh_keygen(home / "host_ed25519")
    client_key = ssh_keygen(home / "client_ed25519")
    authorized = home / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized)
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"  # the key lets root in; the default would too
        "StrictModes no\n"  # pytest's temp directories are not the 0700 ~/.ssh it checks for
        "UsePAM no\n"
        "Subsystem sftp internal-sftp\n"  # what dvc-ssh speaks; no sftp-server binary needed
        "LogLevel VERBOSE\n"
    )
    if os.geteuid() == 0:  # root's sshd chroots its privilege-separated child here
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = home / "sshd.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_banner(server, port, log)
        yield getpass.getuser(), port, client_key
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def remote_storage(
    kind: str, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """A DVC remote's URL, its `dvc remote modify` settings and the environment its clients
    need: a local directory, a bucket of an S3-compatible server (moto) on loopback, or a
    directory behind an OpenSSH server (sftp) on loopback.

    ssh: the client logs in with `keyfile`. The host key goes unchecked, and no setting or
    environment can change that: DVC's ssh remote has no known_hosts option, and sshfs calls
    asyncssh.connect with known_hosts=None, which turns host key validation off (a
    ~/.ssh/known_hosts would be ignored)."""
    if kind == "directory":
        yield str(tmp_path / "dvc-remote"), {}, {}
        return
    if kind == "ssh":
        with ssh_server(tmp_path) as (user, port, client_key):
            yield (
                f"ssh://{user}@127.0.0.1:{port}{tmp_path / 'dvc-remote'}",
                {"keyfile": str(client_key)},
                {},
            )
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
        ).create_bucket(Bucket="models")  # fmt: skip
        yield "s3://models/fashion", {"endpointurl": endpoint}, S3_ENV
    finally:
        server.stop()
