"""Stage 0: check params.yaml as a whole, and this machine against it, before any stage runs.

DVC deletes a stage's outputs just before it runs the stage's command, so a value refused by
`train` itself would already have cost the trained model. Every stage depends on this one, which
refuses what the schema or this machine would refuse later, with the same message, before DVC
has touched an output.

Its output is the JSON Schema of params.yaml (editors check and complete params.yaml with it):
the same bytes for every valid params.yaml, so a changed value reruns this stage, in about two
seconds, and nothing else because of it; each stage's own params decide what else reruns.
"""

from __future__ import annotations

import json

from stages.cli import run_stage
from stages.files import atomic_path
from stages.params import Params, Train, load_params
from stages.paths import PARAMS_SCHEMA


def main() -> None:
    # first: DVC has deleted it, and a refused params.yaml must leave the workspace as it was
    write_schema()
    params = load_params()
    check_machine(params.train)
    print("validate: params.yaml is valid")


def write_schema() -> None:
    text = json.dumps(Params.model_json_schema(by_alias=True), indent=2) + "\n"
    with atomic_path(PARAMS_SCHEMA) as tmp:
        tmp.write_text(text)


def check_machine(cfg: Train) -> None:
    """What train would refuse on this machine: a device it lacks, more processes than GPUs, a
    warm-start revision this repository lacks. Importing torch costs seconds of every params
    change, so only a setting that needs it does."""
    if cfg.device == "cuda" or (cfg.device == "auto" and cfg.nproc > 1):
        from stages.distributed import machine_device

        machine_device(cfg.device, cfg.nproc)
    if cfg.init is not None:
        from stages.registry import fixed_commit

        fixed_commit(cfg.init, "train.init")


if __name__ == "__main__":
    run_stage(main)
