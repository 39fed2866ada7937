"""Warm start: which revisions train.init may name, and loading another model's weights."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.training import versions as registry
from fashion_mnist_mlp.training.checkpoints import METADATA_KEY, save_model
from fashion_mnist_mlp.training.model import MLP, MLPConfig, fold_temperature
from fashion_mnist_mlp.training.revisions import fixed_commit


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A git repository with one commit, tagged v1 and on branch main; the commit's hash."""
    monkeypatch.chdir(tmp_path)
    for args in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@t",
                 "commit", "-q", "--allow-empty", "-m", "one"], ["tag", "v1"]):  # fmt: skip
        subprocess.run(["git", *args], check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_tag_or_a_commit_hash_resolves_to_the_commit(repo: str) -> None:
    assert fixed_commit("v1") == repo
    assert fixed_commit(repo[:10]) == repo


@pytest.mark.parametrize("rev", ["main", "HEAD", "HEAD~0", "v1~0"])
def test_a_moving_name_is_refused_with_the_commit_to_use(repo: str, rev: str) -> None:
    with pytest.raises(StageError, match=f"train.init = '{rev}' is a moving name.*{repo}"):
        fixed_commit(rev)


def test_an_unknown_name_is_refused(repo: str) -> None:
    with pytest.raises(StageError, match="'v2' is not a tag or commit of this repository"):
        fixed_commit("v2")


def exported(tmp_path: Path, config: MLPConfig) -> bytes:
    torch.manual_seed(1)
    save_model(MLP(config), tmp_path / "m.safetensors")
    return (tmp_path / "m.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("source_dropout", "dropout"), [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2)]
)  # dropout layers shift the state_dict's keys, not the weights
def test_warm_start_keeps_the_function_under_other_pixel_statistics(
    repo: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_data,
    source_dropout: float,
    dropout: float,
) -> None:
    source_config = MLPConfig(hidden=(32,), pixel_mean=0.28, pixel_std=0.35, dropout=source_dropout)
    data = exported(tmp_path, source_config)
    monkeypatch.setattr(registry, "read_model_bytes", lambda rev: data)
    model = MLP(MLPConfig(hidden=(32,), pixel_mean=0.30, pixel_std=0.33, dropout=dropout)).eval()
    registry.warm_start(model, repo, "v1")
    source, _ = registry.model_from_bytes(data, "source")
    images = small_data[1].images
    torch.testing.assert_close(model(images), source(images), atol=1e-5, rtol=1e-5)


def test_a_model_of_another_architecture_is_refused_naming_both(
    repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = exported(tmp_path, MLPConfig(hidden=(32, 16)))
    monkeypatch.setattr(registry, "read_model_bytes", lambda rev: data)
    with pytest.raises(
        StageError, match=r"its model is 784-32-16-10, but params\.yaml's model is 784-64-10"
    ):
        registry.warm_start(MLP(MLPConfig(hidden=(64,))), repo, "v1")
    with pytest.raises(
        StageError, match=r"784-32-16-10, .* is 784-32-16-10 with BatchNorm \(model\.batch_norm\)"
    ):
        registry.warm_start(MLP(MLPConfig(hidden=(32, 16), batch_norm=True)), repo, "v1")


def test_a_number_yaml_read_from_a_tag_says_to_quote_it(raw_params: dict) -> None:
    from .conftest import error_of_params

    assert "quote it" in error_of_params(raw_params, {"train.init": 1.0})


@pytest.mark.parametrize("rev", ["--upload-pack=touch x", "a b", ""])
def test_a_name_git_would_read_as_an_option_is_refused_by_the_schema(
    raw_params: dict, rev: str
) -> None:
    from .conftest import error_of_params

    assert "train.init" in error_of_params(raw_params, {"train.init": rev})


def test_warm_start_undoes_the_exports_calibration_temperature(
    repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_data
) -> None:
    torch.manual_seed(1)
    trained = MLP(MLPConfig(hidden=(32,))).eval()
    calibrated = MLP(MLPConfig(hidden=(32,))).eval()
    calibrated.load_state_dict(trained.state_dict())
    fold_temperature(calibrated, 2.5)
    save_model(calibrated, tmp_path / "m.safetensors", {"temperature": 2.5})
    data = (tmp_path / "m.safetensors").read_bytes()
    monkeypatch.setattr(registry, "read_model_bytes", lambda rev: data)
    model = MLP(MLPConfig(hidden=(32,))).eval()
    registry.warm_start(model, repo, "v1")
    images = small_data[1].images
    torch.testing.assert_close(model(images), trained(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", ['"hot"', "0", "-2.5", "1e400", "true", "[2.5]"])
def test_a_temperature_that_is_not_a_positive_number_is_refused(
    repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, temperature: str
) -> None:
    """Metadata written by no export stage: 1 / "hot" or 1 / 0 would be a traceback, and
    0 < T < inf not holding, a network dividing its logits by 0 or flipping them."""
    config = MLPConfig(hidden=(32,))
    metadata = json.dumps({"config": config.to_dict()})[:-1] + f', "temperature": {temperature}}}'
    save_file(MLP(config).state_dict(), tmp_path / "m.safetensors", {METADATA_KEY: metadata})
    data = (tmp_path / "m.safetensors").read_bytes()
    monkeypatch.setattr(registry, "read_model_bytes", lambda rev: data)
    with pytest.raises(
        StageError, match=r"of this repository at v1 has temperature = .* not a pos"
    ):
        registry.warm_start(MLP(config), repo, "v1")
