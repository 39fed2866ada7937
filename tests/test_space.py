"""The search space file: every key and value is checked against params.yaml before a trial
runs, and a trial's values go back into params.yaml's shapes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.loader import with_values
from fashion_mnist_mlp.tools.space import decode, load_space

from .conftest import ROOT

SPACE = {
    "sampler": "tpe",
    "seed": 0,
    "pruner": "median",
    "startup_trials": 2,
    "warmup_epochs": 1,
    "params": {
        "train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "train.batch_size": {"choices": [256, 512]},
        "train.epochs": {"low": 10, "high": 40, "step": 10},
        "model.hidden": {"choices": [[256, 256], [512, 512]]},
    },
}


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """The committed params.yaml (an experiment may have changed the workspace's)."""
    path = tmp_path / "params.yaml"
    committed = ["git", "show", "HEAD:params.yaml"]
    path.write_text(
        subprocess.run(committed, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )
    return path


def space_file(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def refusal(tmp_path: Path, params_file: Path, params: dict, **top: object) -> str:
    with pytest.raises(StageError) as refused:
        load_space(space_file(tmp_path, {**SPACE, **top, "params": params}), params_file)
    return str(refused.value)


def test_the_committed_space_is_valid_against_the_committed_params(params_file: Path) -> None:
    space = load_space(ROOT / "search" / "space.yaml", params_file)
    assert "train.lr" in space.params


def test_ranges_and_choices_become_optuna_distributions(tmp_path: Path, params_file: Path) -> None:
    space = load_space(space_file(tmp_path, SPACE), params_file)
    dists = space.distributions()
    assert dists["train.lr"] == FloatDistribution(1e-3, 1e-2, log=True)
    assert dists["train.epochs"] == IntDistribution(10, 40, step=10)
    assert dists["train.batch_size"] == CategoricalDistribution([256, 512])
    assert dists["model.hidden"] == CategoricalDistribution(["[256, 256]", "[512, 512]"])
    assert decode({"model.hidden": "[256, 256]", "train.lr": 0.002}) == {
        "model.hidden": [256, 256],
        "train.lr": 0.002,
    }


def test_an_unknown_key_is_named_with_the_closest_one(tmp_path: Path, params_file: Path) -> None:
    message = refusal(tmp_path, params_file, {"train.lrr": {"low": 0.001, "high": 0.01}})
    assert "train.lrr: not a key of params.yaml; did you mean 'train.lr'?" in message


@pytest.mark.parametrize(
    ("key", "dim", "expected"),
    [
        ("train.lr", {"low": -0.01, "high": 0.01}, "train.lr = -0.01 is refused"),
        ("model.dropout", {"low": 0.5, "high": 1.5}, "model.dropout = 1.0"),  # the first refused
        (
            "train.optimizer",
            {"choices": ["adamw", "adamx"]},
            "train.optimizer = 'adamx' is refused",
        ),
        (
            "swa.epochs",
            {"low": 0, "high": 10},
            "swa.epochs = 1 is refused",
        ),  # inside: 0 and 10 are fine
        ("split.val_size", {"low": 5000, "high": 10000}, "split.val_size: the split decides"),
    ],
)
def test_a_value_params_yaml_refuses_is_named_before_any_trial(
    tmp_path: Path, params_file: Path, key: str, dim: dict, expected: str
) -> None:
    assert expected in refusal(tmp_path, params_file, {key: dim})


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        ({"low": 0.01, "high": 0.001}, "low (0.01) must be below high (0.001)"),
        ({"low": 0.0, "high": 0.1, "log": True}, "log: true needs low > 0"),
        ({"low": 0.1, "high": 0.5, "log": True, "step": 0.1}, "log and step exclude each other"),
        ({"choices": []}, "at least 1 item"),
        ({"low": 0.1}, "model.dropout.high: Field required"),
        ({"low": 0.1, "high": 0.5, "step": 0.15}, "step 0.15 does not divide high - low"),
    ],
)
def test_a_malformed_range_is_refused(
    tmp_path: Path, params_file: Path, dim: dict, expected: str
) -> None:
    message = refusal(tmp_path, params_file, {"model.dropout": dim})
    assert "is not a valid search space" in message and expected in message, message
    assert "Choices" not in message and "function-after" not in message  # one branch, plainly


def test_a_key_takes_the_number_type_params_yaml_gives_it(
    tmp_path: Path, params_file: Path
) -> None:
    space = {
        "train.epochs": {"low": 10.0, "high": 40.0, "step": 10.0},
        "swa.lr": {"low": 1, "high": 3},
    }
    dists = load_space(
        space_file(tmp_path, {**SPACE, "params": space}), params_file
    ).distributions()
    assert dists["train.epochs"] == IntDistribution(10, 40, step=10)
    assert dists["swa.lr"] == FloatDistribution(1.0, 3.0)
    message = refusal(tmp_path, params_file, {"train.epochs": {"low": 10, "high": 40, "step": 0.5}})
    assert "this key takes integers" in message


def test_unknown_sampler_and_empty_params_are_refused(tmp_path: Path, params_file: Path) -> None:
    message = refusal(tmp_path, params_file, {}, sampler="grid")
    assert "sampler" in message and "params" in message


def test_an_option_block_that_would_have_no_effect_is_refused(
    tmp_path: Path, params_file: Path
) -> None:
    """params.yaml trains with adamw: sgd's lr changes nothing unless sgd is searched too."""
    message = refusal(
        tmp_path, params_file, {"train.optimizers.sgd.momentum": {"low": 0.5, "high": 0.9}}
    )
    assert "train.optimizers.sgd.momentum has no effect: train.optimizer is adamw" in message
    space = {
        "train.optimizer": {"choices": ["adamw", "sgd"]},
        "train.optimizers.sgd.momentum": {"low": 0.5, "high": 0.9},
    }
    load_space(space_file(tmp_path, {**SPACE, "params": space}), params_file)


def test_an_optimizer_lr_under_a_fixed_train_lr_is_refused(
    tmp_path: Path, params_file: Path
) -> None:
    params = with_values(yaml.safe_load(params_file.read_text()), {"train.lr": 0.01})
    params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(
        StageError, match=r"train.optimizers.adamw.lr has no effect: train.lr is a number"
    ):
        load_space(
            space_file(
                tmp_path,
                {**SPACE, "params": {"train.optimizers.adamw.lr": {"low": 0.001, "high": 0.01}}},
            ),
            params_file,
        )


def test_a_missing_space_file_says_how_to_give_one(tmp_path: Path, params_file: Path) -> None:
    with pytest.raises(StageError, match="not found: give a search space with --space"):
        load_space(tmp_path / "none.yaml", params_file)


def test_an_optimizer_lr_beside_a_searched_train_lr_is_refused(
    tmp_path: Path, params_file: Path
) -> None:
    """train.lr's numbers override the optimizer's own lr in every trial."""
    space = {
        "train.lr": {"low": 0.001, "high": 0.01},
        "train.optimizers.adamw.lr": {"low": 0.001, "high": 0.01},
    }
    assert "train.optimizers.adamw.lr has no effect" in refusal(tmp_path, params_file, space)
    space["train.lr"] = {"choices": ["auto", 0.003]}
    load_space(space_file(tmp_path, {**SPACE, "params": space}), params_file)


EPOCHS_AND_SCHEDULER = {
    "train.epochs": {"low": 5, "high": 40},
    "train.scheduler": {"choices": ["cosine", "step", "multistep"]},
}
"""Each key passes alone (params.yaml: 40 epochs, onecycle); 5 epochs never reach step's
step_size of 10 nor multistep's milestone 15."""

MANY_RANGES = {
    "train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    "train.optimizers.adamw.weight_decay": {"low": 0.01, "high": 0.2},
    "train.losses.cross_entropy.label_smoothing": {"low": 0.0, "high": 0.2},
    "train.warmup_start_factor": {"low": 0.1, "high": 0.5},
    "model.dropout": {"low": 0.1, "high": 0.5},
    "model.input_dropout": {"low": 0.0, "high": 0.2},
    "swa.lr": {"low": 3.0e-4, "high": 3.0e-3, "log": True},
    "swa.ema_decay": {"low": 0.99, "high": 0.999},
    "export.atol": {"low": 1.0e-5, "high": 1.0e-4},
}
"""2**9 x 2**1 x 3 = 3072 combinations with EPOCHS_AND_SCHEDULER: past MAX_COMBINATIONS, so the
check goes pair by pair."""


@pytest.mark.parametrize("others", [{}, MANY_RANGES], ids=["every-combination", "every-pair"])
def test_values_refused_together_are_named_by_their_keys_before_any_trial(
    tmp_path: Path, params_file: Path, others: dict
) -> None:
    message = refusal(tmp_path, params_file, {**others, **EPOCHS_AND_SCHEDULER})
    lines = message.splitlines()[1:]
    assert len(lines) == 2, message  # each conflict once, with no key that takes no part
    assert lines[0].startswith(
        "  - train.epochs = 5 with train.scheduler = 'step' is refused together: "
    ), message
    assert "step_size = 10" in lines[0] and "narrow a range or drop a choice" in lines[0]
    assert "train.epochs = 5 with train.scheduler = 'multistep'" in lines[1], message
    load_space(  # from 26 epochs, both take effect
        space_file(
            tmp_path,
            {
                **SPACE,
                "params": {
                    **others,
                    **EPOCHS_AND_SCHEDULER,
                    "train.epochs": {"low": 26, "high": 40},
                },
            },
        ),
        params_file,
    )


WARMUP_AND_SCHEDULER = {
    "train.warmup_epochs": {"low": 0, "high": 5},
    "train.scheduler": {"choices": ["cosine", "linear"]},
}
"""params.yaml's onecycle refuses any warmup, but no trial runs onecycle: every combination of
these is valid."""


def test_a_key_is_checked_beside_the_other_searched_keys_values_not_params_yamls(
    tmp_path: Path, params_file: Path
) -> None:
    load_space(space_file(tmp_path, {**SPACE, "params": WARMUP_AND_SCHEDULER}), params_file)
    with_onecycle = {**WARMUP_AND_SCHEDULER, "train.scheduler": {"choices": ["cosine", "onecycle"]}}
    lines = refusal(tmp_path, params_file, with_onecycle).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith(  # both keys named, as a trial draws them
        "  - train.scheduler = 'onecycle' with train.warmup_epochs = 5 is refused together: "
    ), lines
    assert "already starts low" in lines[0] and "narrow a range or drop a choice" in lines[0]
    only_onecycle = {**WARMUP_AND_SCHEDULER, "train.scheduler": {"choices": ["onecycle"]}}
    assert "train.warmup_epochs = 1 is refused: " in refusal(tmp_path, params_file, only_onecycle)
