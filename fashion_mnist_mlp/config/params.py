"""The one typed, validated schema of the whole params.yaml: its sections, and the checks
across them. The validate stage reads it all (and writes its JSON Schema, params.schema.json);
so do the stages that read the train section (train, swa, export); the others load only their
own sections (fashion_mnist_mlp/config/loader.py).

The schema has no defaults: params.yaml holds every value, so there is one place to read them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import model_validator

from fashion_mnist_mlp.config.loader import parse, read_raw_params
from fashion_mnist_mlp.config.paths import PARAMS_FILE
from fashion_mnist_mlp.config.schema import Strict
from fashion_mnist_mlp.config.sections import (
    Download,
    Evaluate,
    Export,
    Model,
    Numerics,
    Split,
    Swa,
)
from fashion_mnist_mlp.config.train import Train


class Params(Strict):
    download: Download
    split: Split
    model: Model
    train: Train
    swa: Swa
    evaluate: Evaluate
    export: Export
    numerics: Numerics

    @model_validator(mode="after")
    def _batch_norm_sees_two_images_per_share(self) -> Params:
        """BatchNorm in training mode needs 2 images or more in each process's share of every
        batch: the last batch of an epoch may be too small (fashion_mnist_mlp/training/engine.py checks it again,
        for runs started by hand under torchrun)."""
        images, batch = self.split.train_images, self.train.batch_size
        last = images - (-(-images // batch) - 1) * batch
        if self.model.batch_norm and last // self.train.nproc < 2:
            raise ValueError(
                f"model.batch_norm = true needs 2 images or more in each of the train.nproc = "
                f"{self.train.nproc} processes' shares of every batch, but the last batch of the "
                f"{images} training images (split) at train.batch_size = {batch} has {last}: "
                "choose another batch size or split, or model.batch_norm: false"
            )
        return self

    @model_validator(mode="after")
    def _threads_shared_equally(self) -> Params:
        threads, nproc = self.numerics.threads, self.train.nproc
        if threads != "auto" and threads % nproc:
            raise ValueError(
                f"numerics.threads = {threads} is shared by the train.nproc = {nproc} processes: "
                f"make it a multiple of {nproc} (each process gets threads / nproc)"
            )
        return self

    def digest(self, sections: tuple[str, ...]) -> str:
        """sha256 of these sections' values: what a resume state records of the params it was
        saved under, so that the validate stage can tell one that can never be resumed."""
        values = [getattr(self, section).model_dump(mode="json") for section in sections]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; any problem is one StageError naming key, value and fix."""
    return parse_params(read_raw_params(path), source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    return parse(raw, Params, source)
