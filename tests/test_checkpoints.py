from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import OPTIMIZERS, build_optimizer
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.schedulers import SCHEDULERS
from fashion_mnist_mlp.config.sections import MAX_DEPTH, MAX_WIDTH
from fashion_mnist_mlp.config.train import Train
from fashion_mnist_mlp.training.checkpoints import (
    METADATA_KEY,
    PACKAGE_ROOT,
    RESUME_KEY,
    RunKey,
    TrainingState,
    code_digest,
    decode,
    encode,
    load_checkpoint,
    load_training_state,
    read_training_state,
    save_model,
    save_training_state,
)
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.engine import current_lr, seed_epoch, steps_per_epoch, train_epoch
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.schedule import build_schedule

from .conftest import ROOT
from .toolbox import train_config


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_restores_architecture_weights_and_info(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32, 16), dropout=0.1))
    save_model(model, tmp_path / "m.safetensors", {"final_lr": 0.5})
    loaded, info = load_checkpoint(tmp_path / "m.safetensors")
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
        load_checkpoint(evil)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save(MLP(MLPConfig(hidden=(8,))).state_dict(), path)
    with pytest.raises(StageError, match="never unpickled"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(MLP(MLPConfig(hidden=(8,))), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StageError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_model(MLP(MLPConfig(hidden=(8,))), path)
    metadata = {
        "fashion_mlp": '{"config": {"hidden": [16], "dropout": 0.0, "in_features": 784, "num_classes": 10}}'
    }
    save_file(MLP(MLPConfig(hidden=(8,))).state_dict(), path, metadata=metadata)
    with pytest.raises(StageError, match="weights do not fit the architecture"):
        load_checkpoint(path)


def test_missing_file_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="is missing"):
        load_checkpoint(tmp_path / "none.safetensors")


EPOCHS = 4
PAIRS = sorted(
    {(o, s) for o in OPTIMIZERS for s in ("none", "multistep", "onecycle", "plateau")}
    | {(o, s) for o in ("sgd", "adamw") for s in ("none", *SCHEDULERS)}
)


def resume_config(params: Params, optimizer: str, scheduler: str, **changes: object) -> Train:
    """A schedule that changes the lr after the epoch the state is saved at (epoch 1)."""
    return train_config(
        params, optimizer=optimizer, scheduler=scheduler, epochs=EPOCHS, **{
            "schedulers.step.step_size": 2, "schedulers.multistep.milestones": [2, 3],
            "schedulers.plateau.patience": 0, "schedulers.cosine_warm_restarts.T_0": 1,
            "schedulers.cyclic.step_size_up": 0.7,
        } | changes,
    )  # fmt: skip


KEY = RunKey("params digest", "full fingerprint")


def training_run(cfg: Train, data: Images, seed: int):
    """A model with dropout, its optimizer and schedule, initialised from `seed`."""
    torch.manual_seed(seed)
    model = MLP(MLPConfig(hidden=(32,), dropout=0.3))
    optimizer = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    schedule = build_schedule(optimizer, cfg, steps_per_epoch(len(data), 64))
    return model, optimizer, schedule


def run_epochs(cfg: Train, data: Images, run, epochs: range) -> None:
    model, optimizer, schedule = run
    for epoch in epochs:
        stats = train_epoch(model, data, build_loss(cfg), optimizer, 64, seed_epoch(0, epoch),
                            after_step=schedule.after_batch)  # fmt: skip
        # a made-up validation curve that plateaus, so plateau's state matters after the save
        schedule.after_epoch({"val/loss": 1.0 + (epoch == 1), "val/acc": 0.0} | {"x": stats.loss})


@pytest.mark.parametrize(("optimizer", "scheduler"), PAIRS)
def test_training_state_resumes_bit_for_bit(
    tmp_path: Path, params: Params, small_data, optimizer: str, scheduler: str
) -> None:
    data = Images(small_data[0].images[:256], small_data[0].labels[:256])
    cfg = resume_config(params, optimizer, scheduler)
    straight = training_run(cfg, data, seed=0)
    run_epochs(cfg, data, straight, range(1, EPOCHS + 1))

    first = training_run(cfg, data, seed=0)
    run_epochs(cfg, data, first, range(1, 2))
    state = TrainingState(1, [{"val/acc": 0.5}], {"weights": {"w": torch.ones(2)}, "lr": 0.1})
    save_training_state(tmp_path / "s.safetensors", KEY, state, *first)
    torch.rand(100)  # whatever happens between the kill and the rerun

    resumed = training_run(cfg, data, seed=123)  # different init: everything must be restored
    saved = read_training_state(tmp_path / "s.safetensors")
    loaded = load_training_state(saved, KEY, *resumed)
    assert (loaded.epoch, loaded.history, loaded.kept["lr"]) == (1, state.history, 0.1)
    assert torch.equal(loaded.kept["weights"]["w"], torch.ones(2))
    run_epochs(cfg, data, resumed, range(2, EPOCHS + 1))
    for a, b in zip(
        straight[0].state_dict().values(), resumed[0].state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert current_lr(straight[1]) == current_lr(resumed[1])
    assert straight[2].trace == resumed[2].trace


def test_warm_up_resumes_bit_for_bit(tmp_path: Path, params: Params, small_data) -> None:
    data = Images(small_data[0].images[:256], small_data[0].labels[:256])
    cfg = resume_config(params, "adamw", "cosine", warmup_epochs=2)
    straight = training_run(cfg, data, seed=0)
    run_epochs(cfg, data, straight, range(1, EPOCHS + 1))
    first = training_run(cfg, data, seed=0)
    run_epochs(cfg, data, first, range(1, 2))
    save_training_state(tmp_path / "s.safetensors", KEY, TrainingState(1, []), *first)
    resumed = training_run(cfg, data, seed=1)
    load_training_state(read_training_state(tmp_path / "s.safetensors"), KEY, *resumed)
    run_epochs(cfg, data, resumed, range(2, EPOCHS + 1))
    assert straight[2].trace == resumed[2].trace
    assert all(
        torch.equal(a, b)
        for a, b in zip(straight[0].parameters(), resumed[0].parameters(), strict=True)
    )


def test_a_long_runs_lr_trace_fits_the_state_file(
    tmp_path: Path, params: Params, small_data
) -> None:
    """Six million batches' lrs: as JSON they outgrew safetensors' 100 MB header limit."""
    cfg = resume_config(params, "adamw", "cosine")
    run = training_run(cfg, small_data[0], seed=0)
    run[2].trace = [0.1 + i * 1e-9 for i in range(6_000_000)]
    save_training_state(tmp_path / "s.safetensors", KEY, TrainingState(1, []), *run)
    resumed = training_run(cfg, small_data[0], seed=0)
    load_training_state(read_training_state(tmp_path / "s.safetensors"), KEY, *resumed)
    assert resumed[2].trace == run[2].trace


def test_state_encoding_keeps_every_type() -> None:
    value = {
        "milestones": Counter({60: 1, 150: 2}),
        "betas": (0.9, 0.999),
        1: [None, True, 3, 0.1, "s", float("inf")],
        "step": torch.tensor(7.0),
    }
    tensors: dict[str, torch.Tensor] = {}
    decoded = decode(json.loads(json.dumps(encode(value, tensors))), tensors)
    assert decoded == value
    assert type(decoded["milestones"]) is Counter and type(decoded["betas"]) is tuple
    assert [type(v) for v in decoded[1]] == [type(v) for v in value[1]]


def test_training_state_of_other_inputs_or_damaged_is_ignored_and_says_so(
    tmp_path: Path, params: Params, small_data, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = small_data
    run = training_run(params.train, data, seed=0)[:3]
    path = tmp_path / "s.safetensors"
    assert load_training_state(read_training_state(path), KEY, *run) is None  # no file
    assert capsys.readouterr().err == ""
    save_training_state(path, KEY, TrainingState(1, []), *run)
    other = RunKey(KEY.params, "other inputs")
    assert load_training_state(read_training_state(path), other, *run, name="S") is None
    assert capsys.readouterr().err == "note: S is of other params, data or code: starting over\n"
    saved = path.read_bytes()
    absurd = (2**62).to_bytes(8, "little") + saved[8:]  # a header of 4 EiB claimed
    save_file({"x": torch.zeros(1)}, tmp_path / "bomb", metadata={RESUME_KEY: "[" * 200_000})
    bomb = (tmp_path / "bomb").read_bytes()  # json.loads: RecursionError
    for damaged in saved[:200], bytes(len(saved)), absurd, pickle.dumps({"epoch": 1}), bomb:
        assert load_training_state(damaged, KEY, *run, name="S") is None
        (note,) = capsys.readouterr().err.splitlines()
        assert note.startswith("note: S is damaged (") and note.endswith("): starting over")


def test_a_state_that_matches_the_run_but_not_its_tensors_is_refused(
    tmp_path: Path, params: Params, small_data
) -> None:
    """Not written by this code (its key matches, its tensors are another network's): resuming
    it would run on a half-loaded model, starting over would hide it."""
    path = tmp_path / "s.safetensors"
    save_training_state(
        path, KEY, TrainingState(1, []), *training_run(params.train, small_data[0], 0)
    )
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(16,)))
    optimizer = build_optimizer(model.parameters(), params.train, params.train.learning_rate)
    schedule = build_schedule(optimizer, params.train, 4)
    with pytest.raises(StageError, match="S matches this run but its tensors do not"):
        load_training_state(path.read_bytes(), KEY, model, optimizer, schedule, name="S")


def write_with_metadata(path: Path, metadata: str, model: MLP | None = None) -> None:
    tensors = (model or MLP(MLPConfig(hidden=(8,)))).state_dict()
    save_file(tensors, path, metadata={METADATA_KEY: metadata})


CONFIG = (
    '"hidden": [8], "dropout": 0.0, "input_dropout": 0.0, "in_features": 784, "num_classes": 10'
)


@pytest.mark.parametrize(
    ("metadata", "phrase"),
    [
        ("{not json", "metadata that is not valid JSON"),
        ("[1, 2]", "metadata that is not a JSON object"),
        ('{"final_lr": 0.1}', "no architecture ('config')"),
        (
            '{"config": {' + CONFIG + ', "extra": 1}}',
            "config.extra: Extra inputs are not permitted",
        ),
        (
            '{"config": {' + CONFIG.replace("[8]", "[-8]") + "}}",
            "config.hidden.0: Input should be greater than 0",
        ),
        (
            '{"config": {' + CONFIG.replace("784", "785") + "}}",
            "config.in_features: Input should be 784",
        ),
        (
            '{"config": {' + CONFIG.replace("[8]", "[9]") + "}}",
            "net.1.weight F32 [8, 784] instead of F32 [9, 784]",
        ),
        ('{"config": {' + CONFIG.replace("0.0,", "NaN,", 1) + "}}", "NaN: JSON has no such"),
        # provenance a stage saves again (export): json.dumps(allow_nan=False) would fail there
        ('{"config": {' + CONFIG + '}, "final_lr": -Infinity}', "Infinity: JSON has no such"),
        # nested past the recursion limit: json.loads raises RecursionError, not a decode error
        ("[" * 20_000, "not valid JSON (maximum recursion depth exceeded"),
        ('{"a": ' * 10_000, "not valid JSON (maximum recursion depth exceeded"),
        # longer than any metadata save_model writes: refused before parsing
        ("[" * 200_000, "has 200,000 characters of metadata, more than the 65,536"),
        ('{"config": {' + CONFIG + '}, "notes": "' + "x" * 70_000 + '"}', "characters of meta"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_malformed_metadata_is_one_clear_error_naming_the_file(
    tmp_path: Path, metadata: str, phrase: str
) -> None:
    path = tmp_path / "m.safetensors"
    write_with_metadata(path, metadata)
    with pytest.raises(StageError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path} ") and phrase in str(e.value), str(e.value)


def test_metadata_claiming_a_huge_network_is_refused_before_allocating_it(tmp_path: Path) -> None:
    """A small file whose metadata declares the largest network the schema allows (8 layers of
    8192: 1.9 GB) must not make the loader build it first: the header's shapes are checked
    against the config before anything is allocated."""
    path = tmp_path / "m.safetensors"
    huge = CONFIG.replace("[8]", str([MAX_WIDTH] * MAX_DEPTH))
    write_with_metadata(path, '{"config": {' + huge + "}}", MLP(MLPConfig(hidden=(1,))))
    code = (
        "import sys; from pathlib import Path\n"
        "from fashion_mnist_mlp.training.checkpoints import load_checkpoint\nfrom fashion_mnist_mlp.cli import StageError\n"
        f"try:\n    load_checkpoint(Path({str(path)!r}))\nexcept StageError as e:\n    print(e)\n"
        # VmHWM: this process's own peak (ru_maxrss would include the forking pytest's)
        "status = Path('/proc/self/status').read_text().split('VmHWM:')[1]\n"
        "print(int(status.split()[0]) // 1024)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    message, peak_mb = result.stdout.strip().rsplit("\n", 1)
    assert "do not fit the architecture" in message
    assert int(peak_mb) < 1200, f"peak RSS {peak_mb} MB: the network was allocated"


def test_a_model_file_of_the_older_format_loads_with_its_normalization(tmp_path: Path) -> None:
    """Files written before the statistics were measured on the training split (and before
    input dropout) carry neither: they were trained with the full-set statistics."""
    path = tmp_path / "m.safetensors"
    old = '"hidden": [8], "dropout": 0.0, "in_features": 784, "num_classes": 10'
    write_with_metadata(path, '{"config": {' + old + '}, "final_lr": 0.001}')
    model, info = load_checkpoint(path)
    assert (model.config.pixel_mean, model.config.pixel_std) == (0.2860, 0.3530)
    assert model.config.input_dropout == 0.0 and info == {"final_lr": 0.001}


@pytest.mark.parametrize(
    "module", ["stages/train.py", "config/optimizers.py", "training/engine.py", "cli.py"]
)
def test_the_resume_key_changes_with_any_module_of_the_package(tmp_path: Path, module: str) -> None:
    """A killed run is resumed only by the code that wrote its state: a stage, config or
    library edit alike makes its state another run's."""
    copy = tmp_path / "fashion_mnist_mlp"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digest(copy)
    assert before == code_digest(PACKAGE_ROOT)
    with (copy / module).open("a") as f:
        f.write("# an edit\n")
    assert code_digest(copy) != before
