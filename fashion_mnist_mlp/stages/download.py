"""Stage 1: get the four FashionMNIST files into data/raw, verified.

Each file comes from the first source that yields it intact: the local directory
(`download.source_dir`, Debian's dataset-fashion-mnist by default), then each mirror. Local
files are checked by the sha256 of their decompressed content (Debian recompresses the gz
files); downloads also by the official gz md5.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.config.loader import load_sections
from fashion_mnist_mlp.config.paths import RAW_DIR
from fashion_mnist_mlp.config.sections import Download
from fashion_mnist_mlp.training.fashion_mnist import RAW_FILES, RawFile, decompress_verified
from fashion_mnist_mlp.training.files import atomic_dir


def fetch_local(raw: RawFile, source_dir: Path) -> bytes:
    path = source_dir / raw.name
    if not path.is_file():
        raise StageError(f"no {raw.name} there (the directory does not exist or lacks it)")
    gz = path.read_bytes()
    decompress_verified(gz, raw)
    return gz


def fetch_url(raw: RawFile, mirror: str, timeout_s: float) -> bytes:
    url = mirror.rstrip("/") + "/" + raw.name
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc=raw.name, leave=False) as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise StageError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise StageError(str(getattr(e, "reason", e))) from None
    gz = b"".join(chunks)
    md5 = hashlib.md5(gz).hexdigest()
    if md5 != raw.md5:
        raise StageError(f"gz md5 is {md5}, expected {raw.md5}")
    decompress_verified(gz, raw)
    return gz


def fetch(raw: RawFile, cfg: Download) -> bytes:
    """The file's gz bytes from the first source that gives them intact, else one StageError."""
    attempts = [(cfg.source_dir, lambda: fetch_local(raw, Path(cfg.source_dir)))]
    attempts += [(m, lambda m=m: fetch_url(raw, m, cfg.timeout_s)) for m in cfg.mirrors]
    failures = []
    for source, attempt in attempts:
        try:
            gz = attempt()
        except StageError as e:
            failures.append(f"  - {source}: {e}")
            continue
        print(f"{raw.name}: verified, from {source}", flush=True)
        return gz
    raise StageError(
        f"could not get {raw.name} from any source:\n" + "\n".join(failures) + "\n"
        "Fix: install Debian's copy (apt-get install dataset-fashion-mnist), or set "
        "download.source_dir to a directory holding the four FashionMNIST .gz files, "
        "or allow network access to one of download.mirrors."
    )


def main() -> None:
    cfg = load_sections(download=Download).download
    with atomic_dir(RAW_DIR) as staging:
        for raw in RAW_FILES.values():
            (staging / raw.name).write_bytes(fetch(raw, cfg))
    print(f"wrote {RAW_DIR}/ ({sum(f.stat().st_size for f in RAW_DIR.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    run_stage(main)
