"""Damaged files, built here, read by the real stage commands: a truncated, zero-filled or
foreign split, model, resume state or image is one message naming the file, what is wrong
and what to run (exit 2, no traceback, no file changed); a header claiming absurd sizes is
refused before anything is allocated for it. The raw IDX files: tests/test_stage_errors.py."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from fashion_mnist_mlp.config.paths import TEST_DATA, TRAIN_DATA, TRAIN_MODEL, TRAIN_RESUME

from .conftest import Workdir


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def zero_filled(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def absurd_header(path: Path) -> None:
    """A header claiming 2**40 images (860 TB as float32) in a file of a few hundred bytes."""
    n = 2**40
    header = {
        "images": {"dtype": "U8", "shape": [n, 28, 28], "data_offsets": [0, n * 784]},
        "labels": {"dtype": "U8", "shape": [n], "data_offsets": [n * 784, n * 785]},
    }
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(256))


def a_model_file(path: Path) -> None:
    shutil.copy(path.parents[2] / TRAIN_MODEL, path)


def label_out_of_range(path: Path) -> None:
    save_file({"images": np.zeros((4, 28, 28), np.uint8), "labels": np.full(4, 12, np.uint8)}, path)


def unlabelled_images(path: Path) -> None:
    save_file({"images": np.zeros((4, 28, 28), np.uint8)}, path)


# ---- splits: evaluate reads the test split, train the training split ----


@pytest.mark.parametrize(
    ("damage", "phrases"),
    [
        (truncated, ["not a valid safetensors file"]),
        (zero_filled, ["not a valid safetensors file"]),
        (absurd_header, ["not a valid safetensors file"]),
        (a_model_file, ["net.1.weight F32 [16, 784]", "(4 tensors), not a split's images U8"]),
        (unlabelled_images, ["holds images U8 [4, 28, 28], not a split's"]),
        (label_out_of_range, ["holds label 12; classes are 0..9"]),
    ],
)
def test_a_damaged_split_is_refused_naming_it_and_what_to_run(
    work_with_models: Workdir, damage: Callable[[Path], None], phrases: list[str]
) -> None:
    damage(work_with_models.path / TEST_DATA)
    work_with_models.assert_refused(
        "evaluate",
        str(TEST_DATA),
        *phrases,
        f"damaged or not this pipeline's. Restore it (dvc checkout {TEST_DATA})",
        "dvc repro split",
    )


def test_train_refuses_a_damaged_training_split(work_with_models: Workdir) -> None:
    zero_filled(work_with_models.path / TRAIN_DATA)
    work_with_models.assert_refused("train", str(TRAIN_DATA), "not a valid safetensors file")


# ---- models: zero-filled and absurd headers (pickles, truncation: test_stage_errors.py) ----


@pytest.mark.parametrize("damage", [zero_filled, absurd_header])
def test_a_damaged_model_is_refused_naming_it_and_what_to_run(
    work_with_models: Workdir, damage: Callable[[Path], None]
) -> None:
    damage(work_with_models.path / TRAIN_MODEL)
    work_with_models.assert_refused(
        "evaluate", str(TRAIN_MODEL), "not a valid safetensors file", "dvc checkout", "dvc repro"
    )


# ---- a resume state is a cache: damaged, it is said and training starts over ----


def test_a_damaged_resume_state_is_named_and_training_starts_over(
    work_with_models: Workdir,
) -> None:
    work_with_models.set("train.epochs", 1)
    state = work_with_models.path / TRAIN_RESUME
    state.parent.mkdir(parents=True)
    state.write_bytes(bytes(4096))
    result = work_with_models.run("train")
    assert result.returncode == 0, result.stderr
    assert f"note: {TRAIN_RESUME} is damaged (" in result.stderr
    assert "starting over" in result.stderr and "Traceback" not in result.stderr
    assert not state.exists()  # replaced by the fresh run's, then removed once it finished


# ---- images given to predict: read (and refused) before any model is looked for ----


def png(width: int, height: int, pixels: bytes = b"") -> bytes:
    """A PNG whose header says width x height; its image data is `pixels`, compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def noise_png() -> bytes:
    """A real 28x28 PNG of random pixels: it does not compress, so cutting it cuts pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    return png(28, 28, b"".join(b"\0" + row.tobytes() for row in pixels))


@pytest.mark.parametrize(
    ("content", "phrases"),
    [
        (noise_png()[:400], ["not an image this tool can read", "truncated"]),
        (bytes(1000), ["not an image this tool can read"]),
        (b"name,label\nshirt,6\n", ["not an image this tool can read"]),
        (png(9000, 8000), ["9000x8000 pixels, more than the 64,000,000 this tool reads"]),
        (png(30000, 30000), ["not an image this tool can read", "decompression bomb"]),
    ],
    ids=["truncated-png", "zero-filled", "text", "huge-header", "bomb-header"],
)
def test_a_damaged_image_is_refused_before_any_model_is_loaded(
    tmp_path: Path, content: bytes, phrases: list[str]
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(noise_png())
    bad = tmp_path / "shirt.png"
    bad.write_bytes(content)
    Workdir(tmp_path).assert_refused(
        "predict", "shirt.png", *phrases, args=("good.png", "shirt.png")
    )
