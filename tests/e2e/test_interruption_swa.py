"""swa killed with SIGKILL at a random point, with equal averages and with EMA and BatchNorm:
the rerun resumes and ends with an uninterrupted run's bytes (train's cases and what is
checked: test_interruption.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Project
from .interruption import assert_killed_run_resumes, interrupted_project

pytestmark = pytest.mark.e2e

# SWALR anneals over the first epochs; the averages and BatchNorm's statistics carry over
CASES = {
    "swa: equal averages": {"swa": {"strategy": "swa", "anneal_epochs": 4}},
    "swa: ema, batch norm": {"swa": {"strategy": "ema", "anneal_epochs": 4},
                             "model": {"batch_norm": True}},
}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Project:
    return interrupted_project(tmp_path_factory)  # raw_dir: fails at once without the data


@pytest.mark.parametrize("case", list(CASES))
def test_killed_training_resumes_to_the_uninterrupted_result(project: Project, case: str) -> None:
    assert_killed_run_resumes(project, case, CASES[case])
