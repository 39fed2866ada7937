"""The schema's bounds are the real bounds: any params file the schema accepts runs every stage
(on a tiny real subset, a step or two each) to the end, or stops with the one error that a valid
file may still meet at run time, a diverged loss. Params are drawn at and near their bounds, a
few keys at a time, on top of the project's params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.losses import LOSSES
from fashion_mnist_mlp.config.optimizers import OPTIMIZERS
from fashion_mnist_mlp.config.params import parse_params
from fashion_mnist_mlp.config.schedulers import SCHEDULERS

from .conftest import COMMITTED_PARAMS, Workdir, run_in_process

PROJECT = yaml.safe_load(COMMITTED_PARAMS)
STAGES = ["split", "train", "swa", "evaluate", "export"]

unit = st.floats(0, 0.999)
small_positive = st.floats(1e-6, 1.0)
KEYS: dict[str, st.SearchStrategy] = {
    "split.val_size": st.integers(1, 150),
    "split.seed": st.sampled_from([0, 1, 2**32 - 1]),
    "model.hidden": st.lists(st.integers(1, 48), min_size=1, max_size=3),
    "model.dropout": unit,
    "model.input_dropout": unit,
    "train.seed": st.sampled_from([0, 2**32 - 1]),
    "train.epochs": st.integers(0, 2),
    "train.batch_size": st.integers(1, 400),
    "train.precision": st.sampled_from(["fp32", "bf16"]),
    "train.lr": st.one_of(st.just("auto"), small_positive),
    "train.augment.hflip": st.booleans(),
    "train.augment.max_shift": st.integers(0, 4),
    "train.optimizer": st.sampled_from(sorted(OPTIMIZERS)),
    "train.optimizers.sgd": st.fixed_dictionaries(
        {
            "lr": small_positive,
            "weight_decay": st.floats(0, 0.1),
            "momentum": unit,
            "nesterov": st.booleans(),
        }
    ),
    "train.optimizers.adamw.betas": st.lists(unit, min_size=2, max_size=2),
    "train.optimizers.rmsprop": st.fixed_dictionaries(
        {
            "lr": small_positive,
            "weight_decay": st.floats(0, 0.1),
            "alpha": unit,
            "momentum": unit,
            "eps": st.floats(1e-10, 1e-2),
        }
    ),
    "train.optimizers.adagrad.lr_decay": st.floats(0, 1),
    "train.loss": st.sampled_from(sorted(LOSSES)),
    "train.losses.cross_entropy.label_smoothing": unit,
    "train.scheduler": st.sampled_from(["none", *sorted(SCHEDULERS)]),
    "train.warmup_epochs": st.integers(0, 1),
    "train.schedulers.plateau.patience": st.integers(0, 2),
    "train.schedulers.cyclic": st.fixed_dictionaries(
        {
            "div_factor": st.floats(1.01, 1e4),
            "step_size_up": st.floats(0.01, 3),
            "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
            "gamma": st.floats(0.5, 1),
            "cycle_momentum": st.booleans(),
            "base_momentum": unit,
            "max_momentum": unit,
        }
    ),
    "train.early_stopping": st.sampled_from(
        [None, {"metric": "val/acc", "mode": "max", "patience": 1, "min_delta": 0.0}]
    ),
    "train.keep": st.sampled_from(["last", "best"]),
    "train.schedulers.step": st.fixed_dictionaries(
        {"step_size": st.integers(1, 3), "gamma": st.floats(1e-3, 2.0)}
    ),
    "train.schedulers.multistep.milestones": st.lists(st.integers(1, 3), max_size=3),
    "train.schedulers.exponential.gamma": st.floats(1e-3, 2.0),
    "train.schedulers.cosine.eta_min": st.floats(0, 0.1),
    "train.schedulers.onecycle": st.fixed_dictionaries(
        {
            "pct_start": st.floats(0.01, 0.99),
            "div_factor": st.floats(1, 1e4),
            "final_div_factor": st.floats(1, 1e5),
            "anneal_strategy": st.sampled_from(["cos", "linear"]),
            "cycle_momentum": st.booleans(),
            "base_momentum": unit,
            "max_momentum": unit,
        }
    ),
    "swa.epochs": st.integers(0, 2),
    "swa.lr": small_positive,
    "swa.anneal_epochs": st.integers(0, 3),
    "swa.anneal_strategy": st.sampled_from(["cos", "linear"]),
    "evaluate.batch_size": st.integers(1, 20_000),
    "evaluate.misclassified_grid": st.integers(1, 6),  # 20, the bound, is an explicit example
    "export.model": st.sampled_from(["swa", "train"]),
    "export.opset": st.integers(18, 28),
    # in-process, this process's kernels are the portable ones (conftest) for either value; one
    # thread (auto: OMP_NUM_THREADS, 1 here), as two pytest workers share the cores
    "numerics.cpu": st.sampled_from(["portable", "native"]),
    "numerics.threads": st.sampled_from([1, "auto"]),
}

CHANGE = st.sampled_from(sorted(KEYS)).flatmap(lambda key: st.tuples(st.just(key), KEYS[key]))


def set_key(raw: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        raw = raw[key]
    raw[last] = value


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Workdir:
    """A working directory with the raw files, reused by every example (each stage rewrites its
    outputs whole)."""
    return Workdir.with_raw_data(tmp_path_factory.mktemp("smoke"), raw_dir, 300, 60)


@settings(
    max_examples=3,  # each runs the whole pipeline; the explicit examples above run too
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking takes minutes per stage run
)
@example(changes={"split.subset": 60_000, "train.epochs": 0, "swa.epochs": 0})  # a bug once
@example(changes={"train.optimizers.sgd": {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.0,
                                           "nesterov": False}, "train.optimizer": "sgd"})  # fmt: skip
@example(changes={"train.optimizer": "adagrad", "train.scheduler": "onecycle"})  # a bug once
@example(changes={"train.batch_size": 60, "train.epochs": 1})  # 4 steps: a 1-step warm-up
@example(changes={"evaluate.misclassified_grid": 20, "evaluate.batch_size": 1})
@example(changes={"evaluate.misclassified_grid": 1})  # a 1x1 grid: one Axes, no array (a bug once)
@example(changes={"train.optimizer": "lbfgs", "train.loss": "bce", "train.scheduler": "plateau"})
@example(
    changes={
        "export.opset": 28,
        "model.hidden": [24, 16, 8],
        "model.batch_norm": True,
        "model.dropout": 0.2,
    }
)  # the hand-built ONNX graph, deep, at the newest opset
@given(changes=st.lists(CHANGE, min_size=1, max_size=5).map(dict))
def test_params_the_schema_accepts_run_every_stage(work: Workdir, changes: dict) -> None:
    raw = yaml.safe_load(yaml.safe_dump(PROJECT))
    set_key(raw, "split.subset", 300)
    set_key(raw, "split.val_size", 60)
    set_key(raw, "train.epochs", 1)
    set_key(raw, "swa.epochs", 1)
    set_key(raw, "swa.anneal_epochs", 1)
    for key, value in changes.items():
        set_key(raw, key, value)
    try:
        parse_params(raw)
    except StageError:
        assume(False)  # refused up front, with a clear message: that is the schema's job
    if raw["split"]["subset"] == 60_000:
        assume(raw["train"]["epochs"] == 0)  # the whole training set is too slow here
    (work.path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        for stage in STAGES:
            run_in_process(work, stage)
    except StageError as e:
        assert f"{stage}: the loss became" in str(e), (
            f"the schema accepted what {stage} refused: {e}"
        )
