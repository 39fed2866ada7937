"""Does weight averaging earn its place? Plain training against train + SWA and train + EMA at
the same total epochs, over several seeds, on the full data, as queued DVC experiments.

    uv run python bench/averaging.py [--seeds 3] [--arms plain,swa,ema,swa-cosine]
                                     [--arm NAME:key=value,key=value ...]

Prints, per arm, the exported model's test accuracy as mean ± std over the seeds and each
arm's difference from plain training with its spread (the
standard error of a difference of two means). The swa and ema arms share their train stage
(same params), which the run-cache then restores instead of training twice.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._experiments import fresh_clone, metrics_of, run_queued
from fashion_mnist_mlp.config.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def arms() -> dict[str, dict[str, object]]:
    """Arm name -> its -S overrides; every arm trains train.epochs + swa.epochs in all."""
    defaults = load_params(ROOT / "params.yaml")
    total = defaults.train.epochs + defaults.swa.epochs
    averaged = {"train.epochs": defaults.train.epochs, "swa.epochs": defaults.swa.epochs}
    return {
        "plain": {"train.epochs": total, "swa.epochs": 0},
        "swa": averaged | {"swa.strategy": "swa"},
        "ema": averaged | {"swa.strategy": "ema"},
        # the SWA paper's recipe: a schedule that does not anneal to zero, then a constant lr
        "swa-cosine": averaged | {
            "swa.strategy": "swa", "train.scheduler": "cosine",
            "train.schedulers.cosine.eta_min": 0.0005, "swa.lr": 0.0005, "swa.anneal_epochs": 0,
        },
    }  # fmt: skip


def custom_arm(text: str) -> tuple[str, dict[str, str]]:
    """`NAME:key=value,key=value` -> (NAME, its overrides)."""
    name, sep, pairs = text.partition(":")
    overrides = dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)
    if not name or not sep or not overrides:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:key=value[,key=value...]")
    return name, overrides


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default="plain,swa,ema,swa-cosine")
    parser.add_argument(
        "--arm", action="append", default=[], type=custom_arm, metavar="NAME:KEY=VALUE,...",
        help="one more arm: its -S overrides on top of the defaults (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    chosen = {name: overrides for name, overrides in arms().items() if name in args.arms.split(",")}
    chosen |= dict(args.arm)
    runs = {
        f"{arm}-seed{seed}": overrides | {"train.seed": seed, "swa.seed": seed}
        for seed in range(args.seeds)
        for arm, overrides in chosen.items()
    }
    with fresh_clone("bench-averaging-") as repo:
        done = run_queued(repo, runs, lambda name, data: print(f"finished {name}", flush=True))

    accuracy: dict[str, list[float]] = {arm: [] for arm in chosen}
    for name, data in done.items():
        arm = name.rsplit("-seed", 1)[0]
        metrics = metrics_of(data)
        if "metrics/test.json" not in metrics:
            print(f"{name} failed")
            continue
        accuracy[arm].append(metrics["metrics/test.json"]["swa_model"]["accuracy"])
    print(f"\nexported test accuracy over {args.seeds} seeds (train.seed = swa.seed = 0..)")
    print("| arm | overrides | test accuracy | vs plain |")
    print("|---|---|---|---|")
    plain = accuracy.get("plain") or []
    plain_mean, plain_std = summary(plain) if plain else (float("nan"), 0.0)
    for arm, values in accuracy.items():
        if not values:
            continue
        mean, std = summary(values)
        spread = (std**2 / len(values) + plain_std**2 / max(len(plain), 1)) ** 0.5
        versus = "" if arm == "plain" or not plain else f"{mean - plain_mean:+.4f} ± {spread:.4f}"
        shown = ", ".join(f"{k}={v}" for k, v in chosen[arm].items())
        print(f"| {arm} | {shown} | {mean:.4f} ± {std:.4f} | {versus} |")


if __name__ == "__main__":
    main()
