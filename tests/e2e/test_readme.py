"""The documented workflows, run as written, so a documented step cannot rot unseen.

Each block that README.md or a page under docs/ marks `<!-- workflow: NAME -->` runs in a project
of this pipeline on a small subset (SMALL), one command after another under `bash -e`, as a user
types it. The only changes are the placeholders for what is the user's own (a directory the
team reaches, the git remote's URL, the project's URL) and `uv run`, which runs the command in
this test's environment instead of syncing one in each temporary project."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.numpy import load_file

from fashion_mnist_mlp.config.paths import EXPORT_DIR, EXPORT_WEIGHTS, TEST_DATA
from fashion_mnist_mlp.training.fashion_mnist import CLASSES

from ..conftest import ROOT
from .conftest import SMALL, Project, experiments, make_project, measured

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- workflow: ([\w-]+)[^>]*-->\n```(\w+)\n(.*?)\n```", re.DOTALL)
DOCUMENTED = {"experiments", "queue", "retrieval", "remote", "another-project"}
PROJECT_URL = "https://github.com/<org>/<project>"
PLACEHOLDER = re.compile(r"<[a-z][\w |-]*>")
UV_SHIM = """#!/usr/bin/env bash
# `uv run [--flags] CMD ...` as the README types it: CMD in this test's environment
[ "$1" = run ] || { echo "uv (test shim): only 'uv run' is expected here, not: $*" >&2; exit 2; }
shift
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""


def workflows() -> dict[str, tuple[str, str]]:
    """Name -> (language, body) of each marked block of the README and the docs pages."""
    found: dict[str, tuple[str, str]] = {}
    for page in PAGES:
        for name, language, body in MARKED.findall(page.read_text()):
            assert name not in found, f"two workflows named {name!r} (one in {page.name})"
            found[name] = (language, body)
    return found


def script(name: str, substitutions: dict[str, str]) -> str:
    """A workflow's commands (a console block's `$` lines), placeholders replaced: each one must
    be there, so a changed page fails here rather than running something else."""
    language, body = workflows()[name]
    if language == "console":
        body = "\n".join(line[2:] for line in body.splitlines() if line.startswith("$ "))
    for placeholder, value in substitutions.items():
        assert placeholder in body, f"the {name} workflow no longer has {placeholder}"
        body = body.replace(placeholder, value)
    assert not PLACEHOLDER.search(body), f"an unreplaced placeholder in {name}:\n{body}"
    return body


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Project:
    """A reproduced, committed small project with the Makefile, `uv` shimmed, HOME its own."""
    project = make_project(tmp_path_factory.mktemp("readme"), SMALL)
    shutil.copy(ROOT / "Makefile", project.path / "Makefile")
    bin_dir, home = tmp_path_factory.mktemp("bin"), tmp_path_factory.mktemp("home")
    (bin_dir / "uv").write_text(UV_SHIM)
    (bin_dir / "uv").chmod(stat.S_IRWXU)
    project.env["PATH"] = f"{bin_dir}:{project.env['PATH']}"
    project.env["HOME"] = str(home)
    project.env["COLUMNS"] = "250"  # a terminal's width: piped, DVC's tables fold to 80 columns
    project.run("dvc", "repro")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "reproduce the pipeline")
    return project


def run_workflow(
    project: Project, name: str, substitutions: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return project.run("bash", "-euo", "pipefail", "-c", script(name, substitutions or {}))


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
    result = run_workflow(project, "retrieval")
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
