"""Evaluation throughput of the exported model: PyTorch (safetensors) vs ONNX Runtime.

    uv run python bench/inference.py [--repeats 5]

Reads the pipeline's outputs in this workspace (models/export, data/split/test.safetensors), so
run `dvc repro` first. Times the 10,000 test images at the evaluate stage's batch size and
single images (1,000 of them, the latency a serving loop sees), alternating the two runtimes;
prints medians in images per second and checks that both predict the same classes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashion_mnist_mlp.config.params import load_params
from fashion_mnist_mlp.config.paths import EXPORT_ONNX, EXPORT_WEIGHTS, TEST_DATA
from fashion_mnist_mlp.stages.export import INPUT_NAME, OUTPUT_NAME
from fashion_mnist_mlp.training.checkpoints import load_checkpoint
from fashion_mnist_mlp.training.data import load_split

SINGLE_IMAGES = 1000


def images_per_second(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int
) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        predict(images[i : i + batch])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model, _ = load_checkpoint(EXPORT_WEIGHTS)
    model.eval()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(EXPORT_ONNX), options, providers=["CPUExecutionProvider"])
    images = load_split(TEST_DATA).images.unsqueeze(1).numpy()  # (N, 1, 28, 28), as exported

    @torch.inference_mode()
    def torch_predict(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch)).numpy()

    def onnx_predict(batch: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    runtimes = {"PyTorch": torch_predict, "ONNX Runtime": onnx_predict}
    agree = np.array_equal(torch_predict(images).argmax(1), onnx_predict(images).argmax(1))
    eval_batch = load_params().evaluate.batch_size
    cases = {f"batch {eval_batch}, {len(images)} images": (images, eval_batch)}
    cases[f"batch 1, {SINGLE_IMAGES} images"] = (images[:SINGLE_IMAGES], 1)

    print(f"{torch.get_num_threads()} threads, median of {args.repeats}; same predictions: {agree}")
    for case, (data, batch) in cases.items():
        rates: dict[str, list[float]] = {name: [] for name in runtimes}
        for _ in range(args.repeats):
            for name, predict in runtimes.items():
                rates[name].append(images_per_second(predict, data, batch))
        medians = {name: statistics.median(r) for name, r in rates.items()}
        figures = ", ".join(f"{name} {rate:>9,.0f} images/s" for name, rate in medians.items())
        print(
            f"  {case:<26} {figures}  (ONNX/PyTorch {medians['ONNX Runtime'] / medians['PyTorch']:.2f}x)"
        )


if __name__ == "__main__":
    main()
