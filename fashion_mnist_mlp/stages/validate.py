"""Stage 0: check params.yaml as a whole, and this machine against it, before any stage runs.

DVC deletes a stage's outputs just before it runs the stage's command, so a value refused by
`train` itself would already have cost the trained model. Every stage depends on this one, which
refuses what the schema or this machine would refuse later, with the same message, before DVC
has touched an output.

It also cleans up after interrupted runs: a resume state saved under other params (a run
stopped, then its params reverted) and staging files go; a folder's interrupted write is
finished or undone, so the folder stays whole.

Its outputs: the JSON Schema of params.yaml (editors check and complete params.yaml with it),
the same bytes for every valid params.yaml; and models/init.json, the commit train.init names,
rewritten only when that commit changes (a moved tag). A moved tag is nothing DVC sees, so the
stage runs on every `dvc repro` (always_changed), in under a second, and reruns nothing else
unless models/init.json changed (then train); each stage's own params decide what else reruns.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import yaml

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.config.loader import InvalidParams
from fashion_mnist_mlp.config.params import Params, load_params
from fashion_mnist_mlp.config.paths import (
    PARAMS_SCHEMA,
    RESUME_PARAMS_KEY,
    RESUME_SECTIONS,
    TRAIN_INIT,
)
from fashion_mnist_mlp.config.train import Train
from fashion_mnist_mlp.training.files import (
    PARTIAL_SUFFIX,
    atomic_path,
    recover_dir,
    swapped_path,
    tensor_layout,
)
from fashion_mnist_mlp.training.revisions import record_init

OUTPUT_DIRS = (Path("data"), Path("models"), Path("metrics"))


def main() -> None:
    # first: DVC has deleted it, and a refused params.yaml must leave the workspace as it was
    write_schema()
    params = load_checked_params()
    check_machine(params.train)
    record_warm_start(params.train)
    print("validate: params.yaml is valid")
    remove_staging_leftovers()
    remove_stale_resume_states(params)


def write_schema() -> None:
    text = json.dumps(Params.model_json_schema(by_alias=True), indent=2) + "\n"
    with atomic_path(PARAMS_SCHEMA) as tmp:
        tmp.write_text(text)


def load_checked_params() -> Params:
    """load_params, whose refusal also names the stages that read each wrong key: DVC reports
    this stage as the one that failed, though its only fault is being first."""
    try:
        return load_params()
    except InvalidParams as e:
        readers = [f"{key}: {', '.join(stages_reading(key)) or 'none'}" for key in e.keys]
        raise StageError(
            f"{e}\nvalidate stopped the run before any stage, so no output was touched. "
            f"The stages that read these keys (dvc.yaml): {'; '.join(readers)}"
        ) from None


def stages_reading(key: str, pipeline: Path = Path("dvc.yaml")) -> list[str]:
    """The stages of `pipeline` whose params include the dotted `key` (or a part of it)."""
    try:
        stages = yaml.safe_load(pipeline.read_text())["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []  # a message's detail: never a reason to fail differently
    return [
        name
        for name, stage in stages.items()
        for declared in stage.get("params", [])
        if isinstance(declared, str)
        and (key == declared or key.startswith(f"{declared}.") or declared.startswith(f"{key}."))
    ]


def record_warm_start(cfg: Train) -> None:
    """models/init.json, on which train depends: a tag moved since the last run reruns train."""
    if record_init(cfg.init) and cfg.init is not None:
        print(f"validate: recorded in {TRAIN_INIT} the commit train.init = '{cfg.init}' names now")


def check_machine(cfg: Train) -> None:
    """What train would refuse on this machine: a device it lacks, more processes than GPUs.
    Importing torch costs seconds of every run of this stage, so only a setting that needs it
    does."""
    if cfg.device == "cuda" or (cfg.device == "auto" and cfg.nproc > 1):
        from fashion_mnist_mlp.training.distributed import machine_device

        machine_device(cfg.device, cfg.nproc)


def remove_stale_resume_states(params: Params) -> None:
    """A state saved under other values of the params it depends on can never be resumed: the
    stage would start over and replace it, and if the params were reverted to what dvc.lock
    records, the stage never runs again to do so. An unreadable one is no use either."""
    for path, sections in RESUME_SECTIONS.items():
        if not path.is_file():
            continue
        try:
            saved_under = tensor_layout(path)[0].get(RESUME_PARAMS_KEY)
            why = "saved by a run of other params" if saved_under else "not a resume state"
        except (OSError, ValueError):
            saved_under, why = None, "not a readable resume state"
        if saved_under == params.digest(sections):
            continue
        try:
            path.unlink()
        except OSError as e:
            print(f"validate: note: could not remove {path} ({e}), which cannot resume")
            continue
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        print(f"validate: removed {path}, {why}: it cannot resume")


def remove_staging_leftovers() -> None:
    """What writes that a killed stage never finished left (SIGKILL, power loss): a staging file
    is removed; a staging folder is finished or undone (recover_dir), so the output keeps a
    complete copy, old or new, and never an unfinished one. Under DVC no stage runs beside this
    one (DVC holds the workspace's lock); a stage started by hand meanwhile would lose its
    staged write and fail, losing nothing else."""
    found = [*Path(".").glob(f".*{PARTIAL_SUFFIX}")]
    for folder in OUTPUT_DIRS:
        found += folder.rglob(f"*{PARTIAL_SUFFIX}")
    for leftover in found:
        if not leftover.exists():  # handled with a folder before it
            continue
        if leftover.is_dir():
            for done in recover_dir(swapped_path(leftover)):
                print(f"validate: {done}")
        else:
            leftover.unlink(missing_ok=True)
            print(f"validate: removed {leftover}, left by an interrupted write")


if __name__ == "__main__":
    run_stage(main)
