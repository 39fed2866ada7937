"""Every optimizer and every loss on the full data with the default epochs, as queued DVC
experiments, into a README-ready table (docs/toolbox.md): test accuracy of the trained and the
exported model, median seconds per training epoch, and the params each run used.

    uv run python bench/toolbox.py [--only adamw,mse] [--out docs/toolbox.md]

Runs in a fresh clone of HEAD under a temporary directory; the queue runs one experiment at a
time (`--jobs 1`) so the epoch times are comparable. Each run reuses download and split from
the run-cache. About 2-3 minutes a run here, LBFGS about 4x that; 17 runs in all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._experiments import fresh_clone, metrics_of, run_queued
from bench.pipeline import ROOT
from stages.losses import LOSSES
from stages.optimizers import OPTIMIZERS
from stages.params import load_params


def runs() -> dict[str, dict[str, str]]:
    """Experiment name -> its -S overrides: each optimizer with the default loss, then each
    other loss with the default optimizer."""
    defaults = load_params(ROOT / "params.yaml").train
    chosen = {f"opt-{name}": {"train.optimizer": name} for name in OPTIMIZERS}
    others = (name for name in LOSSES if name != defaults.loss)
    return chosen | {f"loss-{name}": {"train.loss": name} for name in others}


def row(name: str, overrides: dict[str, str], data: dict) -> str:
    metrics = metrics_of(data)
    params = data["params"]["params.yaml"]["data"]["train"]
    test, resources = metrics.get("metrics/test.json"), metrics.get("metrics/resources/train.json")
    if not test:
        return f"| `{name}` | failed | | | |"
    used = params["optimizers"][params["optimizer"]]
    shown = ", ".join(f"{k} {v}" for k, v in used.items() if k in ("lr", "weight_decay"))
    option = " ".join(f"`{k}={v}`" for k, v in overrides.items())
    return (
        f"| {option} | {test['train']['accuracy']:.4f} | {test['swa']['accuracy']:.4f} | "
        f"{resources['epoch_seconds']:.2f} | {params['optimizer']} ({shown}), {params['loss']}, "
        f"{params['scheduler']}, {params['epochs']} epochs |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated names (optimizers or losses) to run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "toolbox.md")
    args = parser.parse_args()
    wanted = runs()
    if args.only:
        keep = set(args.only.split(","))
        wanted = {n: o for n, o in wanted.items() if n.split("-", 1)[1] in keep}
    with fresh_clone("bench-toolbox-") as repo:
        done = run_queued(
            repo, wanted, lambda name, data: print(row(name, wanted[name], data), flush=True)
        )
    header = [
        "| option | trained acc | exported acc | epoch s (median) | params used |",
        "|---|---|---|---|---|",
    ]
    table = "\n".join([*header, *(row(n, wanted[n], done[n]) for n in wanted)])
    args.out.write_text(table + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
