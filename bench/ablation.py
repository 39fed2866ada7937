"""From the lesson's setup to the default, one change at a time, as real queued DVC experiments
on full data; and the lesson's own loop, side by side, on the same data.

    uv run python bench/ablation.py [--skip-lesson-loop] [--no-docs]    # make ablation

In a fresh clone of HEAD (the workspace is not touched): first the lesson's own training loop
(its NeuralNetwork, ToTensor's [0, 1] pixels, DataLoader(batch_size=64, shuffle=True),
CrossEntropyLoss, SGD lr 1e-3, 10 epochs) on the pipeline's training split and on all 60,000
training images, scored on the 10,000 test images, so `make lesson` can be compared with what
the lesson prints. Then every step of fashion_mnist_mlp/tools/lesson.py (each keeps the changes before it) and
each change tried and not kept, queued as experiments `ablation-<step>` and run one at a time
(`--jobs 1`, so their times compare). Accuracy is the final (exported) model's on the test
set; seconds are the train and swa stages' own, as they print them (`dvc queue logs`).
Writes docs/ablation.json and the table between the ablation markers of docs/benchmarks.md.
Took 37 minutes here (2026-12-07).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._experiments import dvc, fresh_clone, metrics_of, run_queued, write_between_markers
from bench.lesson_loop import train_loop as lesson_train_loop
from bench.pipeline import ENV, ROOT
from fashion_mnist_mlp.config.paths import RAW_DIR, TEST_DATA, TRAIN_DATA
from fashion_mnist_mlp.tools.lesson import STEPS, TRIED, cumulative, spelled
from fashion_mnist_mlp.training.data import Images, load_split
from fashion_mnist_mlp.training.fashion_mnist import read_images_and_labels
from fashion_mnist_mlp.training.lesson_model import NeuralNetwork

RESULTS = ROOT / "docs" / "ablation.json"
STAGE_SECONDS = re.compile(r"\b(train|swa): ([\d.]+) s, [\d.]+ s per epoch")
LESSON_SEEDS = (0, 1, 2)


def lesson_loop(images: torch.Tensor, labels: torch.Tensor, test: Images, seed: int) -> dict:
    """The lesson's train_loop and test_loop, 10 epochs: test accuracy and seconds."""
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True)
    model = NeuralNetwork()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(10):
        lesson_train_loop(loader, model, loss_fn, optimizer)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(x).argmax(1) == y).sum().item()
            for x, y in DataLoader(TensorDataset(test.images, test.labels), batch_size=64)
        )
    return {"accuracy": correct / len(test), "seconds": round(seconds, 1)}


def lesson_loops(repo: Path) -> dict[str, list[dict]]:
    """The lesson's loop on the pipeline's training split (several seeds) and on all 60,000
    training images, as the lesson trains."""
    split, test = load_split(repo / TRAIN_DATA), load_split(repo / TEST_DATA)
    raw_images, raw_labels = read_images_and_labels(repo / RAW_DIR, "train")
    full = (
        torch.from_numpy(raw_images).float().div_(255),
        torch.from_numpy(raw_labels.astype("int64")),
    )
    runs: dict[str, list[dict]] = {"split": [], "all 60,000": []}
    for seed in LESSON_SEEDS:
        runs["split"].append(lesson_loop(split.images, split.labels, test, seed))
        print(f"lesson loop, training split, seed {seed}: {runs['split'][-1]}", flush=True)
    runs["all 60,000"].append(lesson_loop(*full, test, LESSON_SEEDS[0]))
    print(f"lesson loop, all 60,000, seed 0: {runs['all 60,000'][-1]}", flush=True)
    return runs


def stage_seconds(repo: Path, name: str) -> float:
    """train + swa seconds as the stages printed them in the experiment's log."""
    # not checked: a run that failed before its first stage has no log
    logs = ["dvc", "queue", "logs", name]
    log = subprocess.run(logs, cwd=repo, env=ENV, capture_output=True, text=True).stdout
    return round(sum(float(s) for _, s in STAGE_SECONDS.findall(log)), 1)


def scores(data: dict) -> dict[str, float] | None:
    """The final model's test scores (swa_model's entry: the averaged model, or the trained one
    when swa.epochs is 0) and the exported model's test ECE; None for a failed run."""
    metrics = metrics_of(data)
    test = metrics.get("metrics/test.json", {}).get("swa_model")
    if not test:
        return None
    exported = metrics.get("metrics/calibration.json", {}).get("test", {}).get("after", {})
    return {"accuracy": test["accuracy"], "f1_macro": test["f1_macro"],
            "ece": exported.get("ece", test["ece"])}  # fmt: skip


def row(name: str, what: str, result: dict, base: float | None) -> str:
    if result["scores"] is None:
        return f"| `{name}` | {what} | failed | | | {result['seconds']:.0f} |"
    accuracy = result["scores"]["accuracy"]
    change = "" if base is None else f"{100 * (accuracy - base):+.2f} pt"
    return (
        f"| `{name}` | {what} | {accuracy:.4f} | {change} | {result['scores']['ece']:.3f} "
        f"| {result['seconds']:.0f} |"
    )


def table(results: dict, lesson: dict[str, list[dict]]) -> str:
    """The docs' table: each step against the one before it, each tried change against the
    default (the last step)."""
    rows = [
        "| step | what it adds | test acc | change | ECE | train + swa s |",
        "|---|---|---|---|---|---|",
    ]
    previous = None
    for name, what, _ in STEPS:
        rows.append(row(name, what, results[name], previous))
        previous = (results[name]["scores"] or {}).get("accuracy")
    for name, what, _ in TRIED:
        rows.append(row(name, what, results[name], previous))
    if lesson["split"]:
        split, full = lesson["split"], lesson["all 60,000"][0]
        accuracies = [r["accuracy"] for r in split]
        rows += [
            "",
            f"The lesson's own loop, 10 epochs on the same training split: test accuracy "
            f"{statistics.mean(accuracies):.4f} (seeds {', '.join(map(str, LESSON_SEEDS))}: "
            f"{', '.join(f'{a:.4f}' for a in accuracies)}; "
            f"{statistics.median(r['seconds'] for r in split):.0f} s each); on all 60,000 "
            f"training images, as the lesson trains: {full['accuracy']:.4f} "
            f"({full['seconds']:.0f} s).",
        ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-lesson-loop", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="only print and write the JSON")
    args = parser.parse_args()
    runs = {f"ablation-{name}": spelled(overrides) for name, overrides in cumulative().items()}
    with fresh_clone("ablation-") as repo:
        dvc(repo, "repro", "download")  # the raw files, for the lesson's 60,000 images
        lesson = {"split": [], "all 60,000": []}
        if not args.skip_lesson_loop:
            torch.set_num_threads(2)
            lesson = lesson_loops(repo)

        results: dict[str, dict] = {}

        def record(name: str, data: dict) -> None:
            step = name.removeprefix("ablation-")
            results[step] = {"overrides": runs[name], "scores": scores(data),
                             "seconds": stage_seconds(repo, name)}  # fmt: skip
            print(f"{step}: {results[step]['scores']}, {results[step]['seconds']} s", flush=True)

        # --force: each step runs every stage, so its seconds are its own (the run-cache would
        # restore train for steps that change only swa or export)
        run_queued(repo, runs, record, options=("--force",))
    RESULTS.write_text(json.dumps({"steps": results, "lesson_loop": lesson}, indent=2) + "\n")
    text = table(results, lesson)
    print(text)
    if not args.no_docs:
        write_between_markers("ablation", text)


if __name__ == "__main__":
    main()
