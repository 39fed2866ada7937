"""FashionMNIST on disk: the raw files and their checksums, IDX parsing, the stratified split
and the uint8 safetensors files of each split.

NumPy only: the download and split stages import this without paying ~1.5 s for torch.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.training.files import atomic_path

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
IMAGE_SIDE = 28


@dataclass(frozen=True)
class RawFile:
    name: str
    sha256: str
    """Of the decompressed content: Debian recompresses the gz files, the content is the same."""
    md5: str
    """Of the official gz file, checked for downloads only."""


RAW_FILES = {
    "train_images": RawFile(
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    "train_labels": RawFile(
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    "test_images": RawFile(
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "bef4ecab320f06d8554ea6380940ec79",
    ),
    "test_labels": RawFile(
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
}

_IDX_UBYTE = 0x08


def decompress_verified(gz: bytes, raw: RawFile) -> bytes:
    """Decompress a gz file's bytes and check the content's sha256; StageError if either fails."""
    try:
        content = gzip.decompress(gz)
    except (OSError, EOFError, zlib.error) as e:
        raise StageError(f"{raw.name}: not a valid gzip file ({e})") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != raw.sha256:
        raise StageError(
            f"{raw.name}: content sha256 is {digest}, expected {raw.sha256} (corrupt or wrong file)"
        )
    return content


def parse_idx(content: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse an IDX file of unsigned bytes (magic 0x0000080N, N big-endian uint32 dims)."""
    if len(content) < 4 or content[:2] != b"\0\0" or content[2] != _IDX_UBYTE:
        raise StageError(f"{name}: not an IDX file of unsigned bytes (magic {content[:4].hex()})")
    ndim = content[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(content) < header:
        raise StageError(f"{name}: IDX header is truncated or declares {ndim} dimensions")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(content) - header != expected:
        raise StageError(
            f"{name}: IDX header declares shape {shape} ({expected} bytes) "
            f"but {len(content) - header} bytes follow"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_raw(raw_dir: Path, key: str) -> np.ndarray:
    raw = RAW_FILES[key]
    path = raw_dir / raw.name
    if not path.is_file():
        raise StageError(f"{path} is missing: run the download stage (dvc repro download)")
    return parse_idx(decompress_verified(path.read_bytes(), raw), raw.name)


def read_images_and_labels(raw_dir: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_raw(raw_dir, f"{part}_images"), read_raw(raw_dir, f"{part}_labels")
    check_pair(images, labels, part)
    return images, labels


def check_pair(images: np.ndarray, labels: np.ndarray, part: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise StageError(f"{part} images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise StageError(
            f"{part}: {len(images)} images but labels of shape {labels.shape}; "
            "the images and labels files do not belong together"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise StageError(f"{part} labels: found class {labels.max()}, expected 0..9")


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, chosen) with `size` chosen, each class in proportion.

    Quotas use the largest-remainder method so they sum to exactly `size`; within a class the
    chosen indices are a seeded random draw. Both index arrays come back sorted.
    """
    if not 0 < size < len(labels):
        raise ValueError(f"size must be in (0, {len(labels)}), got {size}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quotas = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[: size - quotas.sum()]] += 1

    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[:q]
            for c, q in zip(classes, quotas, strict=True)
        ]
    )
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def class_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(CLASSES))
    return {name: int(n) for name, n in zip(CLASSES, counts, strict=True)}


def pixel_statistics(images: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation of the pixels scaled to [0, 1], from exact integer sums, so
    they come out the same on any machine and for any order of the images."""
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.int64)  # no big copies
    values = np.arange(256, dtype=np.int64)
    n, total, squares = int(counts.sum()), int(counts @ values), int(counts @ values**2)
    mean = total / n
    variance = max(squares / n - mean * mean, 0.0)
    return {"mean": mean / 255, "std": max(variance**0.5 / 255, MIN_PIXEL_STD)}


MIN_PIXEL_STD = 1e-3
"""Floor for a subset of identical images, whose spread is zero."""


def save_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Images (N, 28, 28) and labels (N,), both uint8, as safetensors: compact, no pickle."""
    tensors = {"images": np.ascontiguousarray(images), "labels": np.ascontiguousarray(labels)}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
