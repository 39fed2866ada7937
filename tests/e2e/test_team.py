"""Two people, one project: a bare git repository as the shared git remote, and a directory, an
S3 bucket (moto) or a directory behind a loopback OpenSSH server as the shared DVC remote. What
one of them computed, the other restores from the run-cache, or pulls as a named experiment,
without running a stage."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import EXPORT_WEIGHTS
from fashion_mnist_mlp.training.versions import load_model, read_model_bytes

from .conftest import Project, experiments, lock_hashes, remote_storage, stages_run
from .workflows import run_script, script, shim_uv

pytestmark = pytest.mark.e2e


def clone(origin: Path, path: Path, env: dict[str, str]) -> Project:
    subprocess.run(["git", "clone", "-q", str(origin), str(path)], check=True, env=env)
    project = Project(path)
    project.env.update(env)  # a remote's credentials
    return project


def team(
    reproduced: Project, tmp_path: Path, local_remote: bool = False, storage: tuple | None = None
) -> tuple[Path, Project]:
    """The shared git remote, and Alice's clone of it with main's outputs in the shared DVC
    remote (`storage`: its URL, settings and client environment), which she names in the
    committed .dvc/config (or, `local_remote`, only in her own .dvc/config.local)."""
    url, settings, env = storage or (str(tmp_path / "dvc-remote"), {}, {})
    origin = tmp_path / "origin.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(reproduced.path), str(origin)],
        check=True, env=reproduced.env,
    )  # fmt: skip
    alice = clone(origin, tmp_path / "alice", {**reproduced.env, **env})
    shutil.copytree(reproduced.path / ".dvc" / "cache", alice.path / ".dvc" / "cache")
    alice.run("dvc", "checkout", "-q")
    scope = ["--local"] if local_remote else []
    alice.run("dvc", "remote", "add", *scope, "-d", "shared", url)
    for key, value in settings.items():
        alice.run("dvc", "remote", "modify", *scope, "shared", key, value)
    if not local_remote:
        alice.run("git", "commit", "-qam", "a shared DVC remote")
        alice.run("git", "push", "-q", "origin", "main")
    alice.run("dvc", "push", "-q")  # main's outputs
    return origin, alice


def alice_and_bob(name: str) -> tuple[str, list[str]]:
    """A two-person workflow of docs/team.md: Alice's commands (her lines, `# Alice`), and
    Bob's (the others), one by one."""
    lines = script(name, {}).splitlines()
    return "\n".join(line for line in lines if "# Alice" in line), [
        line for line in lines if "# Alice" not in line
    ]


@pytest.mark.parametrize("kind", ["directory", "ssh"])
def test_a_colleagues_pushed_run_cache_restores_her_experiment_without_running_it(
    reproduced: Project, tmp_path: Path, kind: str
) -> None:
    """docs/team.md's run-cache workflow as written."""
    hers, (pull, repro) = alice_and_bob("run-cache")
    with remote_storage(kind, tmp_path) as storage:
        origin, alice = team(reproduced, tmp_path, storage=storage)
        shim_uv(alice.env, tmp_path / "bin")
        run_script(alice, hers)  # her experiment, its outputs and how they were made, pushed
        assert any((tmp_path / "dvc-remote" / "runs").rglob("*")), "no run-cache in the remote"
        computed = lock_hashes(alice.read("dvc.lock"))

        bob = clone(origin, tmp_path / "bob", alice.env)  # the remote's client environment too
        run_script(bob, pull)
        bob.set_params({"train": {"lr": 0.0055}})  # "then the same params"
        result = run_script(bob, repro)
    assert stages_run(result) == {"validate"}, result.stdout  # validate is never run-cached
    for stage in ("train", "swa", "evaluate", "export"):
        assert f"Stage '{stage}' is cached - skipping run" in result.stdout, result.stdout
    assert lock_hashes(bob.read("dvc.lock")) == computed


@pytest.mark.parametrize("kind", ["directory", "s3", "ssh"])
def test_a_pushed_experiment_reaches_a_colleague_with_its_params_metrics_and_model(
    reproduced: Project, tmp_path: Path, kind: str
) -> None:
    """docs/team.md's team-experiment workflow as written."""
    with remote_storage(kind, tmp_path) as storage:
        pushed_and_pulled(reproduced, tmp_path, storage)


def pushed_and_pulled(reproduced: Project, tmp_path: Path, storage: tuple) -> None:
    hers, his = alice_and_bob("team-experiment")
    origin, alice = team(reproduced, tmp_path, storage=storage)
    shim_uv(alice.env, tmp_path / "bin")
    run_script(alice, hers)  # the experiment; its git refs and outputs pushed
    alices = experiments(alice)["lr-0055"]

    bob = clone(origin, tmp_path / "bob", alice.env)
    result = run_script(bob, "\n".join(his))  # pull, show, apply
    assert "Pulled experiment" in result.stdout, result.stdout
    assert "lr-0055" in result.stdout  # dvc exp show
    assert "Running stage" not in result.stdout  # apply: no retraining
    bobs = experiments(bob)["lr-0055"]
    assert bobs["params"]["train"]["lr"] == 0.0055
    assert bobs["metrics"] == alices["metrics"] and bobs["outs"] == alices["outs"]

    # from Bob's clone, with no workspace copy: the bytes Alice exported
    assert read_model_bytes("lr-0055", str(bob.path)) == read_model_bytes(
        "lr-0055", str(alice.path)
    )
    assert list(load_model(rev="lr-0055", repo=str(bob.path)).config.hidden) == [512, 512]
    # the applied outputs, checked out: nothing changed but validate, which always runs
    assert bob.run("dvc", "status").stdout == "validate:\n\talways changed\n"
    assert lock_hashes(bob.read("dvc.lock")) == lock_hashes(alice.read("dvc.lock"))


def test_an_experiment_pulled_into_a_clone_without_a_dvc_remote_names_the_missing_data(
    reproduced: Project, tmp_path: Path
) -> None:
    """Alice's DVC remote is only in her .dvc/config.local, so Bob's clone knows none: `dvc exp
    pull` says "Pulled experiment" and brings the git refs without the outputs. load_model
    says what is missing and how to get it."""
    origin, alice = team(reproduced, tmp_path, local_remote=True)
    alice.run("dvc", "exp", "run", "-q", "-n", "lr-0055", "-S", "train.lr=0.0055")
    alice.run("dvc", "exp", "push", "origin", "lr-0055")

    bob = clone(origin, tmp_path / "bob", reproduced.env)
    assert "Pulled experiment" in bob.run("dvc", "exp", "pull", "origin", "lr-0055").stdout
    with pytest.raises(StageError) as refused:
        load_model(rev="lr-0055", repo=str(bob.path))
    message = str(refused.value)
    assert f"{EXPORT_WEIGHTS} of {bob.path} at lr-0055 is not here" in message
    assert "dvc exp pull -f <git remote> lr-0055" in message and "committed .dvc/config" in message
