"""Only what changed reruns: one params key of each stage's group, one line of each module.

After each change the test switches back and reruns: every stage must then come from DVC's
run-cache (no stage command runs but validate's, which runs on every repro) and the workspace
must equal the last commit again.
"""

from __future__ import annotations

import pytest

from .conftest import STAGES, Project, stages_reproduced, stages_run

pytestmark = pytest.mark.e2e

DOWNSTREAM_OF = {s: set(STAGES[i:]) for i, s in enumerate(STAGES)}

# validate runs on every repro (always_changed: it resolves train.init's tag again); its outs
# stay the same bytes, so it adds no other stage.
PARAM_CHANGES = [
    # a download key reruns download; its files come out byte-identical, so nothing after it
    ({"download": {"timeout_s": 31.0}}, {"validate", "download"}),
    ({"split": {"seed": 1}}, {"validate"} | DOWNSTREAM_OF["split"]),
    ({"train": {"lr": 0.005}}, {"validate"} | DOWNSTREAM_OF["train"]),
    ({"swa": {"lr": 0.0015}}, {"validate"} | DOWNSTREAM_OF["swa"]),
    # the grid changes metrics/eval, which nothing reads; metrics/test.json stays the same
    ({"evaluate": {"misclassified_grid": 2}}, {"validate", "evaluate"}),
    ({"export": {"atol": 2.0e-4}}, {"validate", "export"}),
]

# A comment changes no output, so a module edit reruns exactly the stages that import it: a
# stage's own module (late in the pipeline: export does not rerun), a shared one, the option
# tables (not download, split, evaluate or export, which read no scheduler: export's model card
# records the chosen options' blocks as params.yaml states them; the loss table adds evaluate,
# which scores the training loss) and the runtime that steps a scheduler (train alone: its
# outputs keep their bytes, so swa does not rerun). Which modules each stage imports is checked
# for every stage statically by tests/test_dvc_yaml.py.
MODULE_EDITS = [
    ("fashion_mnist_mlp/stages/evaluate.py", {"validate", "evaluate"}),
    ("fashion_mnist_mlp/training/engine.py", {"validate", "train", "swa"}),
    ("fashion_mnist_mlp/config/schedulers.py", {"validate", "train", "swa"}),
    ("fashion_mnist_mlp/config/losses.py", {"validate", "train", "swa", "evaluate"}),
    ("fashion_mnist_mlp/training/schedule.py", {"validate", "train"}),
]


def assert_switching_back_recomputes_nothing(project: Project, changed: str) -> None:
    project.run("git", "checkout", "-q", changed)
    result = project.run("dvc", "repro")
    assert stages_run(result) - {"validate"} == set(), result.stdout
    project.assert_clean()


@pytest.mark.parametrize(
    ("override", "expected"), PARAM_CHANGES, ids=[next(iter(o)) for o, _ in PARAM_CHANGES]
)
def test_a_params_change_reruns_its_stage_and_what_depends_on_it(
    reproduced: Project, override: dict, expected: set[str]
) -> None:
    reproduced.set_params(override)
    assert stages_reproduced(reproduced.run("dvc", "repro")) == expected
    assert_switching_back_recomputes_nothing(reproduced, "params.yaml")


@pytest.mark.parametrize(("module", "expected"), MODULE_EDITS, ids=[m for m, _ in MODULE_EDITS])
def test_a_module_edit_reruns_the_stages_that_import_it(
    reproduced: Project, module: str, expected: set[str]
) -> None:
    with (reproduced.path / module).open("a") as f:
        f.write("# an edit that changes no behaviour\n")
    assert stages_reproduced(reproduced.run("dvc", "repro")) == expected
    assert_switching_back_recomputes_nothing(reproduced, module)
