from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import SPLIT_MANIFEST, TRAIN_DATA, TRAIN_MODEL, VAL_DATA
from fashion_mnist_mlp.training.checkpoints import load_checkpoint
from fashion_mnist_mlp.training.fashion_mnist import (
    RAW_FILES,
    TEST_SIZE,
    TRAIN_SIZE,
    check_pair,
    class_counts,
    decompress_verified,
    parse_idx,
    pixel_statistics,
    read_images_and_labels,
    stratified_split,
)

from .conftest import Workdir, run_in_process


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_round_trips_images_and_labels() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(images)), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\0\0\0\0",
            "not an IDX file of unsigned bytes",
        ),
        (b"PK\x03\x04", "not an IDX file"),
        (b"\x00\x00\x08", "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", "header is truncated"),
        (
            idx_bytes(np.zeros((2, 3), np.uint8))[:-1],
            "declares shape (2, 3) (6 bytes) but 5 bytes follow",
        ),
        (idx_bytes(np.zeros((2, 3), np.uint8)) + b"\0", "but 7 bytes follow"),
    ],
)
def test_parse_idx_rejects_malformed_files(content: bytes, message: str) -> None:
    with pytest.raises(StageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(content)


def test_decompress_verified_rejects_wrong_content() -> None:
    raw = RAW_FILES["train_labels"]
    with pytest.raises(StageError, match=r"content sha256 is .* expected"):
        decompress_verified(gzip.compress(b"not the labels"), raw)


def test_decompress_verified_rejects_truncated_gzip(raw_dir: Path) -> None:
    raw = RAW_FILES["train_labels"]
    gz = (raw_dir / raw.name).read_bytes()
    assert decompress_verified(gz, raw)  # the intact file passes
    with pytest.raises(StageError, match="not a valid gzip file"):
        decompress_verified(gz[: len(gz) // 2], raw)


def test_real_files_parse_to_the_documented_sizes(raw_dir: Path, train_arrays) -> None:
    images, labels = train_arrays
    assert images.shape == (TRAIN_SIZE, 28, 28) and labels.shape == (TRAIN_SIZE,)
    assert set(class_counts(labels).values()) == {6000}
    test_images, test_labels = read_images_and_labels(raw_dir, "test")
    assert test_images.shape == (TEST_SIZE, 28, 28) and len(test_labels) == TEST_SIZE


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((3, 28, 28)), np.zeros(2), "3 images but labels of shape"),
        (np.zeros((3, 28, 27)), np.zeros(3), r"expected \(N, 28, 28\)"),
        (np.zeros((2, 28, 28)), np.array([0, 10]), "found class 10"),
    ],
)
def test_images_and_labels_that_do_not_belong_together_are_rejected(
    images, labels, message
) -> None:
    with pytest.raises(StageError, match=message):
        check_pair(images.astype(np.uint8), labels.astype(np.uint8), "train")


def test_a_file_swapped_for_another_is_caught_by_its_checksum(
    tmp_path: Path, raw_dir: Path
) -> None:
    for raw in RAW_FILES.values():
        (tmp_path / raw.name).symlink_to(raw_dir / raw.name)
    # test labels beside train images: both verify, but do not belong together
    (tmp_path / RAW_FILES["train_labels"].name).unlink()
    (tmp_path / RAW_FILES["train_labels"].name).symlink_to(raw_dir / RAW_FILES["test_labels"].name)
    with pytest.raises(StageError, match="content sha256"):
        read_images_and_labels(tmp_path, "train")


def test_stratified_split_sizes_and_proportions(train_arrays) -> None:
    _, labels = train_arrays
    rest, chosen = stratified_split(labels, 10_000, seed=0)
    assert len(chosen) == 10_000 and len(rest) == 50_000
    assert not set(rest) & set(chosen)
    assert set(class_counts(labels[chosen]).values()) == {1000}


def test_stratified_split_uneven_quotas_sum_exactly() -> None:
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3, dtype=np.uint8)
    rest, chosen = stratified_split(labels, 4, seed=1)
    assert len(chosen) == 4 and len(rest) == 11
    counts = np.bincount(labels[chosen], minlength=3)
    assert all(abs(counts[c] - 4 * n / 15) < 1 for c, n in enumerate([7, 5, 3]))


def test_stratified_split_is_seeded() -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), 50)
    a = stratified_split(labels, 100, seed=0)[1]
    assert np.array_equal(a, stratified_split(labels, 100, seed=0)[1])
    assert not np.array_equal(a, stratified_split(labels, 100, seed=1)[1])


@settings(max_examples=500, deadline=None)
@given(content=st.binary(max_size=64))
def test_parse_idx_accepts_or_refuses_any_bytes_cleanly(content: bytes) -> None:
    try:
        array = parse_idx(content)
    except StageError:
        return
    assert array.dtype == np.uint8 and array.size == len(content) - 4 - 4 * array.ndim


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    cut=st.integers(1, 8),
)
def test_parse_idx_round_trips_any_shape_and_refuses_any_truncation(
    shape: list[int], cut: int
) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    content = idx_bytes(array)
    np.testing.assert_array_equal(parse_idx(content), array)
    with pytest.raises(StageError):
        parse_idx(content[: max(0, len(content) - cut)])


def test_pixel_statistics_are_exact_and_order_free() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (500, 28, 28), dtype=np.uint8)
    stats = pixel_statistics(images)
    scaled = images.astype(np.float64) / 255
    assert stats["mean"] == pytest.approx(scaled.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(scaled.std(), rel=1e-9)
    assert pixel_statistics(images[::-1]) == stats
    assert pixel_statistics(np.zeros((3, 28, 28), np.uint8))["std"] > 0  # floored, not 0


def test_normalization_comes_from_the_training_split_alone(
    tmp_path: Path, raw_dir: Path, train_arrays
) -> None:
    """The split's manifest holds the statistics of the training images it wrote, not of the
    validation images, and train puts them in the model's config."""
    work = Workdir.with_raw_data(tmp_path, raw_dir, subset=3000, val_size=1000)
    work.set("train.epochs", 0)
    for stage in ("split", "train"):
        run_in_process(work, stage)
    manifest = json.loads((work.path / SPLIT_MANIFEST).read_text())["pixel_statistics"]
    train = load_file(work.path / TRAIN_DATA)["images"]
    val = load_file(work.path / VAL_DATA)["images"]
    assert manifest == pixel_statistics(train)
    assert manifest != pixel_statistics(np.concatenate([train, val]))
    model, _ = load_checkpoint(work.path / TRAIN_MODEL)
    assert (model.config.pixel_mean, model.config.pixel_std) == (manifest["mean"], manifest["std"])
