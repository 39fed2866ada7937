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
from stages.distributed import machine_device
from stages.files import atomic_path
from stages.params import Params, load_params
from stages.paths import PARAMS_SCHEMA
from stages.registry import fixed_commit


def main() -> None:
    # first: DVC has deleted it, and a refused params.yaml must leave the workspace as it was
    write_schema()
    params = load_params()
    machine_device(params.train.device, params.train.nproc)
    if params.train.init is not None:
        fixed_commit(params.train.init, "train.init")
    print("validate: params.yaml is valid")


def write_schema() -> None:
    text = json.dumps(Params.model_json_schema(by_alias=True), indent=2) + "\n"
    with atomic_path(PARAMS_SCHEMA) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    run_stage(main)
