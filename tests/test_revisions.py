"""train reads the commit train.init names from validate's record, the file DVC sees as its dep:
a record of another value (validate has not run since train.init changed) is refused, naming
the command that writes it. Writing the record: tests/test_validate.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import TRAIN_INIT
from fashion_mnist_mlp.training.files import write_json
from fashion_mnist_mlp.training.revisions import recorded_init

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "record",
    [None, {"train.init": "v0", "commit": COMMIT}, {"train.init": None, "commit": None}, "{"],
    ids=["missing", "another-tag", "no-init", "damaged"],
)
def test_train_refuses_a_record_that_is_not_of_its_train_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: object
) -> None:
    monkeypatch.chdir(tmp_path)
    if isinstance(record, dict):
        write_json(TRAIN_INIT, record)
    elif record is not None:
        TRAIN_INIT.parent.mkdir()
        TRAIN_INIT.write_text(record)
    with pytest.raises(StageError) as refused:
        recorded_init("v1")
    message = str(refused.value)
    assert "does not record the commit of train.init = 'v1'" in message
    assert "run python -m fashion_mnist_mlp.stages.validate" in message


def test_train_starts_from_the_recorded_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_json(TRAIN_INIT, {"train.init": "v1", "commit": COMMIT})
    assert recorded_init("v1") == COMMIT
