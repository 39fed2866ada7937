"""Any version's model: dvc get/artifacts get of a tag, a commit or an experiment; the Python
API and the predict command; a DVC remote that restores a tagged model without retraining."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import EXPORT_DIR, EXPORT_WEIGHTS, TEST_DATA, TRAIN_INIT
from fashion_mnist_mlp.training.checkpoints import load_checkpoint
from fashion_mnist_mlp.training.fashion_mnist import CLASSES
from fashion_mnist_mlp.training.versions import load_model

from .conftest import Project, lock_hashes, remote_storage, stages_run

pytestmark = pytest.mark.e2e

TAG = "fashion-mlp@v1.0.0"  # the form `dvc artifacts get --rev v1.0.0` resolves (GTO)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tagged(reproduced: Project) -> Project:
    reproduced.run("git", "tag", "-a", TAG, "-m", "first release")
    return reproduced


def test_dvc_get_and_artifacts_get_fetch_the_tagged_model(tagged: Project, tmp_path: Path) -> None:
    expected = digest(tagged.path / EXPORT_WEIGHTS)
    commit = tagged.run("git", "rev-parse", "HEAD").stdout.strip()
    repo = str(tagged.path)
    fetches = {
        "by-tag": ["get", repo, str(EXPORT_DIR), "--rev", TAG],
        "by-commit": ["get", repo, str(EXPORT_DIR), "--rev", commit],
        "artifact": ["artifacts", "get", repo, "fashion-mlp", "--rev", "v1.0.0"],
    }
    for folder, args in fetches.items():
        tagged.run("dvc", *args, "-o", str(tmp_path / folder))
    for folder in fetches:
        assert digest(tmp_path / folder / EXPORT_WEIGHTS.name) == expected, folder
        assert (tmp_path / folder / "model.onnx").is_file()


def test_load_model_of_a_tag_and_of_an_experiment(tagged: Project) -> None:
    tagged.run(
        "dvc",
        "exp",
        "run",
        "-n",
        "wider-dropout",
        "-S",
        "model.dropout=0.5",
        "-S",
        "train.epochs=1",
    )
    tagged.run("git", "checkout", "-q", "--", ".")
    tagged.run("dvc", "checkout", "-q")
    at_tag = load_model(rev=TAG, repo=str(tagged.path))
    exp = load_model(rev="wider-dropout", repo=str(tagged.path))
    workspace, _ = load_checkpoint(tagged.path / EXPORT_WEIGHTS)
    for key, value in workspace.state_dict().items():
        assert torch.equal(at_tag.state_dict()[key], value)
    assert not exp.training and exp.config.dropout == 0.5
    assert not torch.equal(exp.state_dict()["net.1.weight"], workspace.state_dict()["net.1.weight"])


def test_predict_classifies_image_files_with_a_tagged_model(
    tagged: Project, tmp_path: Path
) -> None:
    test = load_file(tagged.path / TEST_DATA)
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(test["images"][i]).save(paths[-1])
    inverted = tmp_path / "photo-on-white.png"  # dark on light and larger: inverted and resized
    Image.fromarray(255 - test["images"][0]).resize((112, 112)).save(inverted)
    result = tagged.run(
        "python",
        "-m",
        "fashion_mnist_mlp.tools.predict",
        *map(str, paths),
        str(inverted),
        "--rev",
        TAG,
        "--top",
        "2",
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 21

    predicted = [line.split(": ")[1].split(" ")[0] for line in lines[:20]]
    correct = sum(
        CLASSES[label].startswith(p)
        for p, label in zip(predicted, test["labels"][:20], strict=True)
    )
    assert correct >= 14, lines  # the small test model scores ~0.8
    assert lines[20].split(": ")[1].split(" ")[0] == predicted[0]


@pytest.fixture(params=["directory", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Project], None]]:
    """Configures a project (in its git-ignored .dvc/config.local) for a remote: a local
    directory, or a bucket of an S3-compatible server (moto) started on loopback."""
    with remote_storage(request.param, tmp_path) as (url, settings, env):

        def configure(project: Project) -> None:
            project.env.update(env)
            project.run("dvc", "remote", "add", "--local", "--force", "-d", "store", url)
            for key, value in settings.items():
                project.run("dvc", "remote", "modify", "--local", "store", key, value)

        yield configure


def test_push_then_pull_a_tagged_model_in_a_fresh_clone(
    tagged: Project, remote: Callable[[Project], None], tmp_path: Path
) -> None:
    remote(tagged)
    tagged.run("dvc", "push", "-q")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(tagged.path), str(clone)], check=True, env=tagged.env)
    fresh = Project(clone)
    fresh.run("git", "checkout", "-q", TAG)
    remote(fresh)
    fresh.run("dvc", "pull", "-q", "export")
    for name in ("model.safetensors", "model.onnx", "model_card.json"):
        assert digest(clone / EXPORT_DIR / name) == digest(tagged.path / EXPORT_DIR / name)
    assert not (clone / "models" / "train.safetensors").exists()  # only what was asked for


def test_a_model_that_is_not_here_is_one_message_naming_what_to_run(
    tagged: Project, tmp_path: Path
) -> None:
    """A fresh clone before `make repro` or `dvc pull`: dvc.lock names the model, no cache holds
    it. predict says what to run, exit 2, instead of DVC's 78-line traceback."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(tagged.path), str(clone)], check=True, env=tagged.env)
    image = tmp_path / "shirt.png"
    Image.fromarray(load_file(tagged.path / TEST_DATA)["images"][0]).save(image)
    for rev, build in ((), "make repro"), (("--rev", TAG), f"git checkout {TAG}"):
        result = Project(clone).run(
            "python", "-m", "fashion_mnist_mlp.tools.predict", str(image), *rev, check=False
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "is not here" in line and build in line and "dvc pull models/export" in line


def test_a_damaged_model_from_another_repository_is_one_message_naming_it(
    tagged: Project, tmp_path: Path
) -> None:
    """Another project's copy whose cache holds a damaged model at the tag (a disk error, a
    bad copy): load_model says which file of which version, and never runs its bytes."""
    other = tmp_path / "other"
    shutil.copytree(tagged.path, other, symlinks=True)
    md5 = hashlib.md5((other / EXPORT_WEIGHTS).read_bytes()).hexdigest()
    cached = other / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    for damaged in cached, other / EXPORT_WEIGHTS:
        damaged.chmod(0o644)
        damaged.write_bytes(bytes(damaged.stat().st_size))
    for rev in TAG, None:
        with pytest.raises(StageError) as refused:
            load_model(rev=rev, repo=str(other))
        message = str(refused.value)
        assert f"{EXPORT_WEIGHTS} of {other} at {rev or 'the workspace'}" in message, message
        assert "not a valid safetensors file" in message and "dvc checkout" in message


def exported(project: Project, commit: str) -> str:
    """The md5 dvc.lock records for the exported model at `commit`."""
    return lock_hashes(project.run("git", "show", f"{commit}:dvc.lock").stdout)[str(EXPORT_DIR)]


def test_moving_the_tag_that_train_init_names_reruns_train(
    reproduced: Project, tmp_path: Path
) -> None:
    """`git tag -f` changes no file; validate, which DVC runs on every repro, resolves the tag
    again into models/init.json, train's dep: train reruns from the tag's new model, and the
    stages before it do not."""
    shutil.copytree(reproduced.path, tmp_path / "project", symlinks=True)
    project = Project(tmp_path / "project")
    base = project.run("git", "rev-parse", "HEAD").stdout.strip()
    project.run("git", "tag", "base")
    project.set_params({"train": {"init": "base"}})
    warm_started = {"validate", "train", "swa", "evaluate", "export"}
    assert stages_run(project.run("dvc", "repro")) == warm_started
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "warm-started from base")
    warm = project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert exported(project, base) != exported(project, warm)  # the tag's next model differs

    # validate runs on every repro, and while the tag stays, that is all
    assert stages_run(project.run("dvc", "repro")) == {"validate"}
    assert project.run("dvc", "status").stdout == "validate:\n\talways changed\n"

    project.run("git", "tag", "-f", "base", warm)
    # DVC sees the move once validate has resolved the tag again, as `dvc repro` does first
    project.run("dvc", "repro", "validate")
    status = project.run("dvc", "status").stdout
    assert f"train:\n\tchanged deps:\n\t\tmodified:           {TRAIN_INIT}\n" in status, status
    assert "download:" not in status and "split:" not in status
    result = project.run("dvc", "repro")
    assert stages_run(result) == warm_started
    assert f"starting from the exported model of base ({warm[:12]})" in result.stdout
    assert json.loads(project.read("metrics/train/metrics.json"))["init_commit"] == warm
