"""Every optimizer and every loss on the full data with the default epochs, as queued DVC
experiments, into the table of docs/benchmarks.md (between its toolbox markers): test accuracy
of the trained and the exported model, seconds per training epoch, and the params each run used.

    uv run python bench/toolbox.py [--only adamw,mse] [--timing-only] [--no-docs]

Runs in a fresh clone of HEAD under a temporary directory. First the epoch times, side by side
in this process before any experiment runs (the train stage's loop on the full training split,
median of 3 epochs each, one option after another); then the experiments, queued and run one at
a time. Each reuses download and split from the run-cache. About 2-3 minutes a run here, LBFGS
about 4x that; 17 runs in all.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._experiments import fresh_clone, metrics_of, run_queued, write_between_markers
from bench.pipeline import ROOT
from fashion_mnist_mlp.config.losses import LOSSES
from fashion_mnist_mlp.config.optimizers import OPTIMIZERS
from fashion_mnist_mlp.config.params import load_params


def runs() -> dict[str, dict[str, str]]:
    """Experiment name -> its -S overrides: each optimizer with the default loss, then each
    other loss with the default optimizer."""
    defaults = load_params(ROOT / "params.yaml").train
    chosen = {f"opt-{name}": {"train.optimizer": name} for name in OPTIMIZERS}
    others = (name for name in LOSSES if name != defaults.loss)
    return chosen | {f"loss-{name}": {"train.loss": name} for name in others}


def epoch_seconds(repo: Path, wanted: dict[str, dict[str, str]]) -> dict[str, float]:
    """Name -> the train stage's median epoch seconds with its overrides (3 epochs): one real
    stage process each, one after another (the machine to itself)."""
    from bench._stages import stage_project
    from bench.epoch_time import stage_seconds
    from fashion_mnist_mlp.config.loader import with_values

    params = yaml.safe_load((repo / "params.yaml").read_text())
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="toolbox-") as tmp:
        project = Path(tmp)
        stage_project(project, params)
        for name, overrides in wanted.items():
            changed = with_values(params, {**overrides, "train.epochs": 3})
            seconds[name] = stage_seconds(project, changed)
            print(f"{name}: {seconds[name]:.2f} s/epoch", flush=True)
    return seconds


def row(name: str, overrides: dict[str, str], data: dict, seconds: float) -> str:
    metrics = metrics_of(data)
    params = data["params"]["params.yaml"]["data"]["train"]
    test = metrics.get("metrics/test.json")
    if not test:
        return f"| `{name}` | failed | | {seconds:.2f} | |"
    used = params["optimizers"][params["optimizer"]]
    shown = ", ".join(f"{k} {v}" for k, v in used.items() if k in ("lr", "weight_decay"))
    option = " ".join(f"`{k}={v}`" for k, v in overrides.items())
    return (
        f"| {option} | {test['trained_model']['accuracy']:.4f} | {test['swa_model']['accuracy']:.4f} | "
        f"{seconds:.2f} | {params['optimizer']} ({shown}), {params['loss']}, "
        f"{params['scheduler']}, {params['epochs']} epochs |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated names (optimizers or losses) to run")
    parser.add_argument("--timing-only", action="store_true", help="epoch times, no experiments")
    parser.add_argument("--no-docs", action="store_true", help="only print the table")
    args = parser.parse_args()
    wanted = runs()
    if args.only:
        keep = set(args.only.split(","))
        wanted = {n: o for n, o in wanted.items() if n.split("-", 1)[1] in keep}
    with fresh_clone("bench-toolbox-") as repo:
        seconds = epoch_seconds(repo, wanted)
        if args.timing_only:
            return
        done = run_queued(
            repo,
            wanted,
            lambda name, data: print(row(name, wanted[name], data, seconds[name]), flush=True),
        )
    header = [
        "| option | trained acc | exported acc | epoch s (side by side) | params used |",
        "|---|---|---|---|---|",
    ]
    table = "\n".join([*header, *(row(n, wanted[n], done[n], seconds[n]) for n in wanted)])
    print(table)
    if not args.no_docs:
        write_between_markers("toolbox", table)


if __name__ == "__main__":
    main()
