"""dvc.yaml is the architecture: check that it says what the code does."""

from __future__ import annotations

import ast
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from fashion_mnist_mlp.config import paths

from .conftest import ROOT, committed

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
PIPELINE = ["validate", "download", "split", "train", "swa", "evaluate", "export"]


PACKAGE = "fashion_mnist_mlp"


def module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def imported_modules(node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package's modules an import statement names (`from pkg.folder import module` too)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith(PACKAGE + ".")]
    if node.level or not (node.module or "").startswith(PACKAGE):
        return []
    submodules = [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in [node.module, *submodules] if module_file(m).exists()]


def runtime_imports(node: ast.AST) -> Iterator[ast.ImportFrom | ast.Import]:
    """The import statements under `node` that run (lazy ones in functions too); not those
    under `if TYPE_CHECKING:`, which only type checkers read."""
    if isinstance(node, ast.ImportFrom | ast.Import):
        yield node
    type_only = isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING
    for child in node.orelse if type_only else ast.iter_child_nodes(node):
        yield from runtime_imports(child)


TYPE_CHECKING = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def direct_imports(module: str) -> set[str]:
    """The package's modules that `module` imports when it runs."""
    tree = ast.parse(module_file(module).read_text())
    return {m for node in runtime_imports(tree) for m in imported_modules(node)}


def project_imports(module: str) -> set[str]:
    """Files of the package that `module` imports, directly or transitively (lazy imports too)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += direct_imports(name)
    return {str(module_file(m).relative_to(ROOT)) for m in seen}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith(PACKAGE + "/")}


def test_the_pipeline_has_its_seven_stages_in_order() -> None:
    assert list(STAGES) == PIPELINE


@pytest.mark.parametrize("name", PIPELINE)
def test_each_stage_runs_its_own_module(name: str) -> None:
    module = f"{PACKAGE}.stages.{name}"
    assert STAGES[name]["cmd"] == f"python -m {module}"
    assert "def main() -> None:" in module_file(module).read_text()


@pytest.mark.parametrize("name", PIPELINE)
def test_code_deps_are_exactly_the_modules_the_stage_imports(name: str) -> None:
    # the packages' __init__.py files hold docstrings and the lazy load_model export; they
    # compute nothing a stage writes, so they are not listed
    assert code_deps(STAGES[name]) == project_imports(f"{PACKAGE}.stages.{name}")


def test_imports_only_type_checkers_read_are_no_deps() -> None:
    tree = ast.parse(
        "if TYPE_CHECKING:\n    from fashion_mnist_mlp.config.params import Params\n"
        "else:\n    import fashion_mnist_mlp.cli\n"
        "def f():\n    from fashion_mnist_mlp.config.paths import X\n"
    )
    assert [ast.unparse(node) for node in runtime_imports(tree)] == [
        "import fashion_mnist_mlp.cli",
        "from fashion_mnist_mlp.config.paths import X",
    ]


OPTION_READERS = {
    "optimizers": {"validate", "train", "swa"},
    "schedulers": {"validate", "train", "swa"},
    "losses": {"validate", "train", "swa", "evaluate"},
}
"""The stages each option table is a dep of: those that read its options (evaluate: the loss,
test.json's objective). Not export: its model card records the chosen options' blocks as
params.yaml states them, without the tables."""


@pytest.mark.parametrize("table", OPTION_READERS)
def test_an_option_table_is_a_dep_of_the_stages_that_read_options_only(table: str) -> None:
    """So an edit to an optimizer, a loss or a scheduler reruns only the stages it can affect:
    the params models import the tables, never the other way round, and download and split
    load only their own sections."""
    path = str(module_file(f"{PACKAGE}.config.{table}").relative_to(ROOT))
    assert {name for name, stage in STAGES.items() if path in stage["deps"]} == OPTION_READERS[
        table
    ]


def test_no_module_imports_one_that_imports_it_back() -> None:
    """Not even for type hints: the option tables do not know the params models built from
    them, so adding an option is its table entry and its params.yaml block."""
    modules = [
        str(path.relative_to(ROOT).with_suffix("")).replace("/", ".")
        for path in sorted((ROOT / PACKAGE).rglob("*.py"))
    ]
    imports = {
        module: {
            imported
            for node in ast.walk(ast.parse(module_file(module).read_text()))
            if isinstance(node, ast.ImportFrom | ast.Import)
            for imported in imported_modules(node)
        }
        - {module}
        for module in modules
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module not in done:
            for imported in sorted(imports.get(module, ())):
                visit(imported, [*path, module])
            done.add(module)

    for module in modules:
        visit(module, [])


def test_the_package_imports_itself_by_its_one_name() -> None:
    """No relative imports and no other name: a reader greps one dotted path."""
    other = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / PACKAGE).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    assert not other, f"relative imports: {other}"


def outs(stage: dict) -> list[str]:
    """An out is a path, or a one-key mapping of its path to options (`cache: false`)."""
    return [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]


def all_declared_paths() -> set[str]:
    declared = set()
    for stage in STAGES.values():
        declared |= {d for d in stage.get("deps", []) if not d.startswith(PACKAGE + "/")}
        declared |= set(outs(stage))
    return declared


# Written by train and swa but deliberately no outs: wall-clock figures would change dvc.lock on
# every run. They are git-ignored instead, and not in dvc.yaml's metrics, which DVC reads from
# every revision (where they never are).
UNVERSIONED = {str(paths.TRAIN_RESOURCES), str(paths.SWA_RESOURCES)}


def test_wall_clock_figures_are_neither_outs_nor_in_git() -> None:
    assert not UNVERSIONED & all_declared_paths()
    assert not UNVERSIONED & set(DVC_YAML["metrics"])
    ignored = subprocess.run(
        ["git", "check-ignore", *UNVERSIONED], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert set(ignored) == UNVERSIONED


def test_every_path_in_the_code_is_declared_in_dvc_yaml() -> None:
    declared = all_declared_paths() | UNVERSIONED
    # The resumable states of train and swa are deliberately no outs: DVC deletes outs before a run.
    # params.yaml is every stage's params file, not a dep or out.
    unlisted = {paths.TRAIN_RESUME, paths.SWA_RESUME, paths.PARAMS_FILE}
    constants = [v for v in vars(paths).values() if isinstance(v, Path) and v not in unlisted]
    constants += list(paths.MODELS.values())
    for path in map(str, constants):  # a declared path, inside one, or a folder of several
        assert any(
            path == d or path.startswith(d + "/") or d.startswith(path + "/") for d in declared
        ), path


def test_every_out_is_a_dep_of_a_later_stage_or_a_final_product() -> None:
    finals = {"models/export", "metrics/train", "metrics/swa", "metrics/eval", "metrics/test.json"}
    finals.add("metrics/calibration.json")
    for i, name in enumerate(PIPELINE):
        later_deps = {d for later in PIPELINE[i + 1 :] for d in STAGES[later]["deps"]}
        for out in outs(STAGES[name]):
            assert out in later_deps or out in finals, f"{name} writes {out}, which nothing reads"


def test_metrics_and_plots_point_into_stage_outputs() -> None:
    written = [o for s in STAGES.values() for o in outs(s)]
    files = list(DVC_YAML["metrics"])
    for plot in DVC_YAML["plots"]:
        if isinstance(plot, str):
            files.append(plot)
        else:
            (props,) = plot.values()
            files += list(props["y"])
    for f in set(files) - UNVERSIONED:
        assert any(f == o or f.startswith(o + "/") for o in written), f


def test_every_stage_after_validate_depends_on_its_output() -> None:
    """So DVC runs validate, which reads all of params.yaml, before it deletes any other
    stage's outputs; and validate's output is in git, beside params.yaml, for editors."""
    schema, init = map(str, (paths.PARAMS_SCHEMA, paths.TRAIN_INIT))
    assert STAGES["validate"]["params"] == [{"params.yaml": None}]
    assert STAGES["validate"]["outs"] == [
        {schema: {"cache": False}},
        {init: {"cache": False, "persist": True}},  # rewritten only when the commit changes
    ]
    assert STAGES["validate"]["always_changed"]  # a moved tag is nothing else DVC sees
    assert init in STAGES["train"]["deps"]
    for name in PIPELINE[1:]:
        assert schema in STAGES[name]["deps"], name
    tracked = subprocess.run(["git", "ls-files", schema], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout.strip() == schema


def test_the_exported_model_is_a_registered_artifact() -> None:
    (artifact,) = DVC_YAML["artifacts"].values()
    assert artifact["type"] == "model" and artifact["path"] == str(paths.EXPORT_DIR)


def test_committed_lock_matches_the_code_and_params() -> None:
    """dvc.lock records the run the README quotes; after a change to a stage's code or params
    it must be re-recorded (`make repro`, commit dvc.lock), or `dvc status` shows the pipeline
    as changed in every fresh clone."""
    yaml12 = YAML(typ="safe")  # as DVC reads them: `1e-08` is a float in YAML 1.2, not in 1.1
    lock = yaml12.load(committed("dvc.lock"))["stages"]
    params = yaml12.load(committed("params.yaml"))
    # the code's hashes; the data between stages is the workspace's (an experiment's, maybe)
    outs = {out["path"] for stage in lock.values() for out in stage["outs"]}
    stale = []
    for name, stage in lock.items():
        for dep in stage["deps"]:
            path = ROOT / dep["path"]
            if any(dep["path"] == out or dep["path"].startswith(f"{out}/") for out in outs):
                continue
            if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            current = params
            for part in key.split("."):
                current = current[part]
            if current != value:
                stale.append(f"{name}: params {key}")
    assert not stale, f"dvc.lock is stale; run `make repro` and commit dvc.lock: {stale}"
