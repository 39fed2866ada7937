"""Stage 2: a seeded, stratified train/validation split of the 60,000 training images.

The 10,000 test images pass through untouched. Every split is written once as uint8
safetensors, so later stages never decode the IDX files again.
"""

from __future__ import annotations

from fashion_mnist_mlp.cli import run_stage
from fashion_mnist_mlp.config.loader import load_sections
from fashion_mnist_mlp.config.paths import RAW_DIR, SPLIT_MANIFEST, TEST_DATA, TRAIN_DATA, VAL_DATA
from fashion_mnist_mlp.config.sections import Split
from fashion_mnist_mlp.training.fashion_mnist import (
    RAW_FILES,
    class_counts,
    pixel_statistics,
    read_images_and_labels,
    save_arrays,
    stratified_split,
)
from fashion_mnist_mlp.training.files import sha256_file, write_json


def main() -> None:
    cfg = load_sections(split=Split).split
    images, labels = read_images_and_labels(RAW_DIR, "train")
    if cfg.subset is not None and cfg.subset < len(labels):
        _, keep = stratified_split(labels, cfg.subset, cfg.seed)
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = stratified_split(labels, cfg.val_size, cfg.seed)
    parts = {
        "train": (TRAIN_DATA, images[train_idx], labels[train_idx]),
        "val": (VAL_DATA, images[val_idx], labels[val_idx]),
        "test": (TEST_DATA, *read_images_and_labels(RAW_DIR, "test")),
    }
    for path, part_images, part_labels in parts.values():
        save_arrays(path, part_images, part_labels)

    manifest = {
        "source_sha256": {raw.name: raw.sha256 for raw in RAW_FILES.values()},
        # the model's input normalization: of the training split only, so validation stays unseen
        "pixel_statistics": pixel_statistics(images[train_idx]),
        "splits": {
            name: {
                "file": path.name,
                "sha256": sha256_file(path),
                "size": len(part_labels),
                "class_counts": class_counts(part_labels),
            }
            for name, (path, _, part_labels) in parts.items()
        },
    }
    write_json(SPLIT_MANIFEST, manifest)
    sizes = ", ".join(f"{name} {len(lab)}" for name, (_, _, lab) in parts.items())
    print(f"split: {sizes} images")


if __name__ == "__main__":
    run_stage(main)
