"""The documented workflows of README.md and docs/, run as written (see workflows.py), so a
documented step cannot rot unseen; all of them but those of several clones: the multi-machine
search's (test_search_across_machines.py) and Alice's and Bob's (test_team.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from PIL import Image
from safetensors.numpy import load_file

from fashion_mnist_mlp.config.paths import EXPORT_DIR, EXPORT_WEIGHTS, TEST_DATA
from fashion_mnist_mlp.training.fashion_mnist import CLASSES

from ..conftest import ROOT
from .conftest import SMALL, Project, experiments, make_project, measured, restore_workspace
from .studies import (
    assert_each_trial_is_its_experiment,
    assert_holds_the_trials_values,
    ran_at_once,
)
from .test_search import remove_experiments
from .workflows import run_script, script, shim_uv, workflows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOCUMENTED = {
    "experiments", "queue", "retrieval", "remote", "another-project",
    "search", "search-machines", "search-fetch", "run-cache", "team-experiment",
}  # fmt: skip
PROJECT_URL = "https://github.com/<org>/<project>"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Project:
    """A reproduced, committed small project with the Makefile, `uv` shimmed, HOME its own."""
    project = make_project(tmp_path_factory.mktemp("readme"), SMALL)
    shutil.copy(ROOT / "Makefile", project.path / "Makefile")
    shim_uv(project.env, tmp_path_factory.mktemp("bin"))
    project.env["HOME"] = str(tmp_path_factory.mktemp("home"))
    project.env["COLUMNS"] = "250"  # a terminal's width: piped, DVC's tables fold to 80 columns
    project.run("dvc", "repro")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "reproduce the pipeline")
    return project


def run_workflow(
    project: Project, name: str, substitutions: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_script(project, script(name, substitutions or {}))


def test_the_docs_mark_every_documented_workflow() -> None:
    assert set(workflows()) == DOCUMENTED


def test_experiments(project: Project) -> None:
    result = run_workflow(project, "experiments")
    exps = experiments(project)
    assert exps["sgd"]["params"]["train"]["optimizer"] == "sgd"
    assert exps["sgd-05"]["params"]["train"]["lr"] == 0.05
    assert "sgd-05" in result.stdout  # make exps
    assert re.search(r"train\.optimizer\s+adamw\s+sgd", result.stdout), result.stdout  # exp diff
    assert (project.path / "dvc_plots" / "index.html").is_file()
    project.assert_clean()  # the block's last line: back to the last commit


def test_queue(project: Project) -> None:
    before = set(experiments(project))
    # `make queue` returns at once; its workers hold the captured output until the queue drains
    run_workflow(project, "queue")
    deadline = time.monotonic() + 300
    while "Queued" in (status := project.run("dvc", "queue", "status").stdout) or (
        "Running" in status
    ):
        assert time.monotonic() < deadline, f"the queue did not finish:\n{status}"
        time.sleep(3)
    swept = {name: e for name, e in experiments(project).items() if name not in before}
    assert len(swept) == 4, status  # 2 optimizers x 2 swa.epochs
    assert all(e["state"] == "success" and measured(e) for e in swept.values()), swept
    assert "Failed" not in project.run("make", "exps").stdout
    project.assert_clean()


def test_retrieval(project: Project) -> None:
    test = load_file(project.path / TEST_DATA)
    for file, label in (("shirt.png", "Shirt"), ("boot.jpg", "Ankle boot")):
        first = list(test["labels"]).index(CLASSES.index(label))
        Image.fromarray(test["images"][first]).save(project.path / file)
    try:
        result = run_workflow(project, "retrieval")
    finally:
        for file in ("shirt.png", "boot.jpg"):  # the user's images: not the project's
            (project.path / file).unlink()
    exported = sorted(p.name for p in (project.path / EXPORT_DIR).iterdir())
    downloaded = f"Downloaded {len(exported)} file(s) to 'artifact'"
    assert downloaded in result.stdout + result.stderr
    assert downloaded in workflows()["retrieval"][1]  # the page shows what DVC prints
    for folder in ("artifact", "exported"):
        assert sorted(p.name for p in (project.path / folder).iterdir()) == exported
    lines = result.stdout.strip().splitlines()[-2:]
    assert [line.split(":")[0] for line in lines] == ["shirt.png", "boot.jpg"], result.stdout


def test_remote(project: Project, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_workflow(project, "remote", {"/mnt/shared/dvc-store": str(store),
                                     "<git remote>": str(project.path)})  # fmt: skip
    clone = Path(project.env["HOME"]) / "fashion"
    assert (clone / EXPORT_WEIGHTS).read_bytes() == (project.path / EXPORT_WEIGHTS).read_bytes()
    assert any(store.rglob("*")), "dvc push wrote nothing to the remote"


def test_another_project_installs_this_one_and_loads_a_tagged_model(
    project: Project, tmp_path: Path
) -> None:
    """pyproject.toml's package in a virtual environment of its own (its dependencies at the
    locked versions), used from a directory outside any repository."""
    tag = "fashion-mlp@v1.1.0"
    if project.run("git", "tag", "-l", tag).stdout.strip() != tag:  # test_remote makes it
        project.run("git", "tag", "-a", tag, "-m", "release")
    uv = [*(shutil.which("uv") or "python3 -m uv").split(), "-q"]  # as the Makefile finds it
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    constraints = tmp_path / "constraints.txt"
    subprocess.run([*uv, "export", "--project", str(ROOT), "--frozen", "--no-dev",
                    "--no-emit-project", "--no-hashes", "-o", str(constraints)], check=True)  # fmt: skip
    subprocess.run([*uv, "venv", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([*uv, "pip", "install", "--python", str(venv / "bin" / "python"),
                    "-c", str(constraints), str(ROOT)], check=True)  # fmt: skip
    code = script("another-project", {PROJECT_URL: str(project.path)})
    env = {**project.env, "PATH": f"{venv / 'bin'}:{project.env['PATH']}"}

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    assert "hidden=(512, 512)" in run(str(venv / "bin" / "python"), "-c", code)
    image = elsewhere / "shirt.png"
    Image.fromarray(load_file(project.path / TEST_DATA)["images"][0]).save(image)
    predicted = run("fashion-mnist-predict", str(image), "--repo", str(project.path), "--rev", tag)
    assert predicted.startswith(f"{image}: ")


def test_search(project: Project) -> None:
    """`make search`, then two workers adding to the same SQLite study (3 trials in all instead
    of 40): every trial an experiment with the study's values, made in a temporary copy; then
    the best one applied, by the name the search's last line gives."""
    project.assert_clean()
    *searches, apply = script(
        "search", {"TRIALS=20": "TRIALS=1", "TRIALS=40": "TRIALS=3"}
    ).splitlines()
    result = run_script(project, "\n".join(searches))
    study_db = project.path / "search" / "study.db"
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{study_db}")
    trials = study.get_trials()
    names = [t.user_attrs["experiment"] for t in trials if "experiment" in t.user_attrs]
    try:
        # the two workers ask while fewer than 3 trials exist: both may ask for the last one
        assert 3 <= len(trials) <= 4, [t.state for t in trials]
        assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
        assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
        assert result.stdout.count("search: study 'search': ") == 3  # 1 worker, then 2
        assert ran_at_once(trials[1:]), [(t.datetime_start, t.datetime_complete) for t in trials]
        assert_each_trial_is_its_experiment(project, trials)
        best = study.best_trial.user_attrs["experiment"]
        assert f"search: best: trial {study.best_trial.number}, experiment {best}," in result.stdout
        project.assert_clean()  # the trials ran in copies

        assert "search-7" in apply
        run_script(project, apply.replace("search-7", best))
        assert_holds_the_trials_values(
            yaml.safe_load(project.read("params.yaml")), study.best_trial
        )
    finally:
        restore_workspace(project)
        remove_experiments(project, names)
        study_db.unlink()
