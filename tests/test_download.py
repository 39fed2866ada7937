from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.params import Download
from fashion_mnist_mlp.stages.download import fetch
from fashion_mnist_mlp.training.fashion_mnist import RAW_FILES

LABELS = RAW_FILES["test_labels"]


def config(source_dir: Path | str, mirrors: list[str]) -> Download:
    return Download(source_dir=str(source_dir), mirrors=mirrors, timeout_s=5.0)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on loopback serving the files in a temporary folder."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def test_local_copy_is_used_when_intact(raw_dir: Path) -> None:
    assert fetch(LABELS, config(raw_dir, [])) == (raw_dir / LABELS.name).read_bytes()


def test_every_failed_source_is_listed_with_the_fix(tmp_path: Path, raw_dir: Path, mirror) -> None:
    url, root = mirror
    # Debian's recompressed copy: right content, but not the official gz, so its md5 differs
    (root / LABELS.name).write_bytes((raw_dir / LABELS.name).read_bytes())
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / LABELS.name).write_bytes(b"\x1f\x8b truncated")
    empty_mirror = url + "missing/"
    with pytest.raises(StageError) as e:
        fetch(LABELS, config(tmp_path / "local", [url, empty_mirror]))
    message = str(e.value)
    assert f"could not get {LABELS.name} from any source" in message
    assert "not a valid gzip file" in message  # the local copy
    assert f"expected {LABELS.md5}" in message  # the first mirror
    assert f"{empty_mirror}: HTTP 404" in message  # the second mirror
    assert "apt-get install dataset-fashion-mnist" in message and "download.source_dir" in message


def test_missing_source_dir_while_offline(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="the directory does not exist or lacks it"):
        fetch(LABELS, config(tmp_path / "nowhere", ["http://127.0.0.1:9/"]))
