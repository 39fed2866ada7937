from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from stages.checkpoints import (
    TrainingState,
    load_model,
    load_training_state,
    save_model,
    save_training_state,
)
from stages.cli import StageError
from stages.data import Images
from stages.engine import seed_epoch, steps_per_epoch, train_epoch
from stages.model import MLP, MLPConfig
from stages.optim import build_loss, build_optimizer, build_scheduler
from stages.params import Params


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_restores_architecture_weights_and_info(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32, 16), dropout=0.1))
    save_model(model, tmp_path / "m.safetensors", {"final_lr": 0.5})
    loaded, info = load_model(tmp_path / "m.safetensors")
    assert loaded.config == model.config and info == {"final_lr": 0.5}
    assert not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_same_model_gives_the_same_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(8,)))
    save_model(model, tmp_path / "a.safetensors", {"b": 1, "a": 2, "c": 3})
    save_model(model, tmp_path / "b.safetensors", {"c": 3, "a": 2, "b": 1})
    assert sha(tmp_path / "a.safetensors") == sha(tmp_path / "b.safetensors")


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = Payload()
    payload.marker = str(marker)
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(StageError, match="not a valid safetensors file"):
        load_model(evil)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save(MLP(MLPConfig(hidden=(8,))).state_dict(), path)
    with pytest.raises(StageError, match="never unpickled"):
        load_model(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(MLP(MLPConfig(hidden=(8,))), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StageError, match="not a valid safetensors file"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_model(MLP(MLPConfig(hidden=(8,))), path)
    metadata = {
        "fashion_mlp": '{"config": {"hidden": [16], "dropout": 0.0, "in_features": 784, "num_classes": 10}}'
    }
    save_file(MLP(MLPConfig(hidden=(8,))).state_dict(), path, metadata=metadata)
    with pytest.raises(StageError, match="weights do not fit the architecture"):
        load_model(path)


def test_missing_file_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="is missing"):
        load_model(tmp_path / "none.safetensors")


def training_run(params: Params, data: Images, seed: int):
    """A model with dropout, optimizer (fused AdamW) and per-batch one-cycle scheduler."""
    torch.manual_seed(seed)
    model = MLP(MLPConfig(hidden=(32,), dropout=0.3))
    optimizer = build_optimizer(model.parameters(), params.train, params.train.lr)
    scheduler, _ = build_scheduler(optimizer, params.train, steps_per_epoch(len(data), 64))
    return model, optimizer, scheduler


def run_epochs(params: Params, data: Images, run, epochs: range) -> None:
    model, optimizer, scheduler = run
    for epoch in epochs:
        train_epoch(model, data, build_loss(params.train), optimizer, 64, seed_epoch(0, epoch),
                    after_step=scheduler.step)  # fmt: skip


def test_training_state_resumes_bit_for_bit(tmp_path: Path, params: Params, small_data) -> None:
    data, _ = small_data
    straight = training_run(params, data, seed=0)
    run_epochs(params, data, straight, range(1, 4))

    first = training_run(params, data, seed=0)
    run_epochs(params, data, first, range(1, 2))
    state = TrainingState(1, [{"val/acc": 0.5}])
    save_training_state(tmp_path / "s.safetensors", "fp", state, *first)
    torch.rand(100)  # whatever happens between the kill and the rerun

    resumed = training_run(params, data, seed=123)  # different init: everything must be restored
    loaded = load_training_state(tmp_path / "s.safetensors", "fp", *resumed)
    assert loaded == state
    run_epochs(params, data, resumed, range(2, 4))
    for a, b in zip(
        straight[0].state_dict().values(), resumed[0].state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_training_state_of_other_inputs_or_damaged_is_ignored(
    tmp_path: Path, params: Params, small_data
) -> None:
    data, _ = small_data
    run = training_run(params, data, seed=0)
    path = tmp_path / "s.safetensors"
    assert load_training_state(path, "fp", *run) is None  # no file
    save_training_state(path, "fp", TrainingState(1, []), *run)
    assert load_training_state(path, "other params", *run) is None
    path.write_bytes(path.read_bytes()[:200])
    assert load_training_state(path, "fp", *run) is None
    path.write_bytes(pickle.dumps({"epoch": 1}))
    assert load_training_state(path, "fp", *run) is None
