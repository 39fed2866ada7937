from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.loader import InvalidParams, load_sections, with_values
from fashion_mnist_mlp.config.losses import LOSSES, TrainLoss
from fashion_mnist_mlp.config.optimizers import OPTIMIZERS
from fashion_mnist_mlp.config.params import Params, load_params, parse_params
from fashion_mnist_mlp.config.schedulers import SCHEDULERS
from fashion_mnist_mlp.config.sections import Evaluate, Split

from .conftest import COMMITTED_PARAMS, ROOT

PROJECT_RAW = yaml.safe_load(COMMITTED_PARAMS)  # with_value copies it


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(COMMITTED_PARAMS)


def with_value(raw: dict, dotted: str, value: object) -> dict:
    return with_values(raw, {dotted: value})


def error_of(raw: object) -> str:
    with pytest.raises(StageError) as e:
        parse_params(raw)
    return str(e.value)


def test_project_params_are_valid(params: Params) -> None:
    assert params.train.optimizer in OPTIMIZERS
    assert params.split.val_size < 60_000


def test_unknown_key_suggests_the_close_one(raw: dict) -> None:
    message = error_of(with_value(raw, "train.lrr", 0.1))
    assert "train.lrr: unknown key; did you mean 'lr'?" in message


def test_unknown_section_suggests_the_close_one(raw: dict) -> None:
    raw["trian"] = {}
    assert "did you mean 'train'?" in error_of(raw)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "train.lr",
            -1.0,
            "train.lr = -1.0: Input should be 'auto' or a finite number greater than 0",
        ),
        ("train.batch_size", 0, "train.batch_size = 0: Input should be greater than 0"),
        ("train.epochs", -1, "train.epochs = -1"),
        ("train.batch_size", "64", "train.batch_size = '64': Input should be a valid integer"),
        ("train.epochs", 1.5, "train.epochs = 1.5"),
        ("train.optimizer", "adamx", "train.optimizer = 'adamx': Input should be 'sgd', 'adam'"),
        ("train.scheduler", "cyclical", "train.scheduler = 'cyclical': Input should be 'none'"),
        ("train.loss", "hinge", "train.loss = 'hinge': Input should be 'cross_entropy'"),
        ("split.val_size", 60_000, "split.val_size = 60000 must be smaller than the 60000"),
        ("export.model", "best", "export.model = 'best'"),
    ],
)
def test_bad_value_names_key_value_and_allowed(
    raw: dict, key: str, value: object, expected: str
) -> None:
    assert expected in error_of(with_value(raw, key, value))


def test_scheduler_args_that_belong_to_another_scheduler_are_rejected(raw: dict) -> None:
    message = error_of(with_value(raw, "train.schedulers.step.pct_start", 0.3))
    assert "train.schedulers.step.pct_start: unknown key" in message
    assert "allowed here: gamma, step_size" in message


def test_val_size_must_fit_in_the_subset(raw: dict) -> None:
    raw = with_value(with_value(raw, "split.subset", 500), "split.val_size", 500)
    assert "split.val_size = 500 must be smaller than the 500 images" in error_of(raw)


def test_missing_key_is_reported(raw: dict) -> None:
    del raw["train"]["lr"]
    assert "train.lr: missing" in error_of(raw)


def test_floats_in_exponent_form_are_floats(tmp_path: Path, raw: dict) -> None:
    # PyYAML reads `1e-4` as a string (YAML 1.1); DVC's -S writes it so (YAML 1.2).
    text = yaml.safe_dump(with_value(raw, "train.lr", "LR")).replace("lr: LR", "lr: 1e-4")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.lr == pytest.approx(1e-4)


def test_invalid_yaml_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train: {lr: [\n")
    with pytest.raises(StageError, match="is not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not found"):
        load_params(tmp_path / "params.yaml")


def leaf_paths(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict) and node:
        return [p for key, child in node.items() for p in leaf_paths(child, (*prefix, key))]
    return [prefix]


ANY_YAML_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 600), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_value_change_is_accepted_or_refused_by_name(data) -> None:
    """Replace one leaf of the project's params with anything YAML can hold: the schema either
    accepts it or raises one StageError that names that key. It never crashes otherwise."""
    path = data.draw(st.sampled_from(leaf_paths(PROJECT_RAW)))
    value = data.draw(ANY_YAML_VALUE)
    changed = with_value(PROJECT_RAW, ".".join(path), value)
    try:
        parse_params(changed)
    except StageError as e:
        # a check across a block's keys names the block, then its keys
        block, leaf = ".".join(path[:-1]), str(path[-1])
        assert ".".join(path) in str(e) or (f"{block}: " in str(e) and leaf in str(e)), str(e)


@settings(max_examples=100, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_any_unknown_key_is_refused_by_name(key: str) -> None:
    if key in PROJECT_RAW["train"]:
        return
    message = error_of(with_value(PROJECT_RAW, f"train.{key}", 1))
    assert f"train.{key}: unknown key" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"train.optimizers.sgd.momentum": 0.0, "train.optimizers.sgd.nesterov": True},
            "nesterov = true needs momentum > 0",
        ),
        (
            {"train.optimizer": "adagrad", "train.schedulers.onecycle.cycle_momentum": True},
            "train.optimizer = 'adagrad' has none",
        ),
        (
            {"train.schedulers.onecycle.base_momentum": 0.96},
            "base_momentum = 0.96 must not exceed max_momentum",
        ),
        ({"train.lr": float("inf")}, "train.lr = inf"),
        ({"swa.lr": float("nan")}, "swa.lr = nan"),
        ({"download.timeout_s": float("inf")}, "download.timeout_s = inf"),
        ({"split.seed": -1}, "split.seed = -1"),
        ({"train.seed": 2**32}, "train.seed = 4294967296"),
        ({"split.subset": 60_001}, "split.subset = 60001"),
        ({"model.hidden": [100_000]}, "model.hidden.0 = 100000"),
        ({"model.hidden": [8] * 9}, "model.hidden"),
        ({"swa.epochs": 2, "swa.anneal_epochs": 3}, "swa.anneal_epochs = 3 is longer than the run"),
        ({"train.epochs": 10, "train.scheduler": "multistep"}, "milestones"),
    ],
)
def test_combinations_torch_or_numpy_would_refuse_late_are_refused_early(
    raw: dict, changes: dict, expected: str
) -> None:
    for key, value in changes.items():
        raw = with_value(raw, key, value)
    assert expected in error_of(raw)


def test_a_subset_of_every_image_is_all_of_them(raw: dict) -> None:
    assert parse_params(with_value(raw, "split.subset", 60_000)).split.subset == 60_000


def test_a_key_that_moved_says_where_it_went(raw: dict) -> None:
    message = error_of(with_value(raw, "train.weight_decay", 0.05))
    assert "train.weight_decay: moved: each optimizer has its own" in message
    assert "train.optimizers.<name>.weight_decay" in message


def test_sparseadam_is_refused_with_what_to_use_instead(raw: dict) -> None:
    message = error_of(with_value(raw, "train.optimizer", "sparseadam"))
    assert "train.optimizer = 'sparseadam': SparseAdam accepts only sparse gradients" in message
    assert "use adam or adamw" in message


def written(tmp_path: Path, raw: dict) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "params.yaml"


def test_a_stage_validates_the_sections_it_reads_as_the_whole_file_would(
    tmp_path: Path, raw: dict
) -> None:
    """download, split and evaluate load their own sections only (the validate stage checks the
    whole file before any of them runs): another section's mistake is not theirs, and theirs
    reads as it does in the whole file."""
    raw = with_values(raw, {"train.lr": -1.0, "train.optimizer": "adamx", "swa.epochs": -1})
    sections = load_sections(written(tmp_path, raw), split=Split, train=TrainLoss)
    assert sections.split.val_size == raw["split"]["val_size"]
    assert sections.train.loss_args == parse_params(PROJECT_RAW).train.loss_args

    raw = with_values(raw, {"split.val_size": 60_000, "train.loss": "hinge"})
    with pytest.raises(InvalidParams) as e:
        load_sections(written(tmp_path, raw), split=Split, evaluate=Evaluate, train=TrainLoss)
    assert e.value.keys == ["split", "train.loss"]  # split: a check across its keys
    for line in str(e.value).splitlines()[1:]:
        assert line in error_of(raw)


@pytest.mark.parametrize(
    ("key", "table"),
    [("optimizer", OPTIMIZERS), ("loss", LOSSES), ("scheduler", SCHEDULERS)],
)
def test_params_yaml_leaves_the_list_of_options_to_the_schema(key: str, table: dict) -> None:
    """A list of a table's names in a comment goes stale when an option is added; the JSON
    Schema that validate writes lists them for editors."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    line = next(line for line in lines if line.strip().startswith(f"{key}:"))
    comment = line.partition("#")[2]
    assert sum(name in comment.split() for name in table) <= 1, comment
