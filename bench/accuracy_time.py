"""Test accuracy for training time: the main knobs (epochs, batch size, SWA epochs) varied one at
a time around the defaults, each a real `dvc exp run`, drawn as docs/accuracy_time.png (figures
in docs/accuracy_time.json; `--replot` redraws from them).

    uv run python bench/accuracy_time.py [--out docs/accuracy_time.png]

Runs in a fresh clone of HEAD under a temporary directory, one experiment after another (so
they do not share the cores), and lets DVC's run-cache skip what repeats: the SWA series reuses
the default training run. Time is the train and swa stages' own seconds
(metrics/resources/*.json); accuracy is the exported (SWA) model's on the 10,000 test images.
Takes about 20 minutes here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline import ENV, ROOT
from fashion_mnist_mlp.config.params import load_params

EPOCHS = (10, 20, 40, 60, 80)
BATCH_SIZES = (128, 256, 512, 1024)
SWA_EPOCHS = (0, 5, 10, 20)

Results = dict[str, list[tuple[int, dict[str, float]]]]


def series(defaults: dict[str, int]) -> dict[str, list[dict[str, int]]]:
    """Each knob's values with the other knobs at their defaults (the default run in each)."""
    return {
        "train.epochs": [{**defaults, "train.epochs": v} for v in EPOCHS],
        "train.batch_size": [{**defaults, "train.batch_size": v} for v in BATCH_SIZES],
        "swa.epochs": [{**defaults, "swa.epochs": v} for v in SWA_EPOCHS],
    }


def run_experiment(repo: Path, overrides: dict[str, int]) -> dict[str, float]:
    flags = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
    subprocess.run(["dvc", "exp", "run", "-q", *flags], cwd=repo, env=ENV, check=True)

    def read(path: str) -> dict:
        return json.loads((repo / path).read_text())

    return {
        "seconds": read("metrics/resources/train.json")["seconds"]
        + read("metrics/resources/swa.json")["seconds"],
        "accuracy": read("metrics/test.json")["swa_model"]["accuracy"],
    }


def plot(results: Results, defaults: dict[str, int], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for knob, points in results.items():
        ax.plot(
            [r["seconds"] for _, r in points],
            [r["accuracy"] for _, r in points],
            marker="o",
            label=knob,
        )
        for value, r in points:
            if value != defaults[knob]:
                ax.annotate(
                    str(value),
                    (r["seconds"], r["accuracy"]),
                    textcoords="offset points",
                    xytext=(-6, 7),
                    fontsize=8,
                )
    default = next(r for value, r in results["train.epochs"] if value == defaults["train.epochs"])
    ax.plot(
        default["seconds"], default["accuracy"], "k*", markersize=14, label="defaults", zorder=3
    )
    ax.set_xlabel("train + swa seconds (2-core CPU)")
    ax.set_ylabel("test accuracy, exported (SWA) model")
    label = ", ".join(f"{knob} {value}" for knob, value in defaults.items())
    ax.set_title(f"One knob at a time around the defaults: {label}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy_time.png")
    parser.add_argument("--replot", action="store_true", help="redraw from the saved .json")
    args = parser.parse_args()
    saved = args.out.with_suffix(".json")
    if args.replot:
        data = json.loads(saved.read_text())
        plot(data["results"], data["defaults"], args.out)
        return

    params = load_params(ROOT / "params.yaml")
    defaults = {
        "train.epochs": params.train.epochs,
        "train.batch_size": params.train.batch_size,
        "swa.epochs": params.swa.epochs,
    }
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        repo = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        for knob, runs in series(defaults).items():
            results[knob] = []
            for overrides in runs:
                result = run_experiment(repo, overrides)
                results[knob].append((overrides[knob], result))
                print(
                    f"{knob}={overrides[knob]:<5} {result['seconds']:7.1f} s  accuracy {result['accuracy']:.4f}",
                    flush=True,
                )

    saved.write_text(json.dumps({"defaults": defaults, "results": results}, indent=1) + "\n")
    plot(results, defaults, args.out)
    print(f"wrote {args.out} and {saved}")


if __name__ == "__main__":
    main()
