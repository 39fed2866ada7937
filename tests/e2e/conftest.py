"""A temporary git + DVC project holding a copy of this pipeline, run with real `dvc` commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
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


@contextlib.contextmanager
def remote_storage(
    kind: str, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """A DVC remote's URL, its `dvc remote modify` settings and the environment its clients
    need: a local directory, or a bucket of an S3-compatible server (moto) on loopback."""
    if kind == "directory":
        yield str(tmp_path / "dvc-remote"), {}, {}
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
