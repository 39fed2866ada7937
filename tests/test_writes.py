"""Every output is written atomically: the whole pipeline runs (in this process, on a small real
subset) while an audit hook records each file opened for writing, copied or renamed, and each
safetensors write. Any write to a final output name, rather than to a staging name that is then
renamed into place, fails the test."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.files import PARTIAL_SUFFIX
from stages.paths import MODELS, SPLIT_MANIFEST, TRAIN_DATA

from .conftest import Workdir, run_in_process

PIPELINE = ["validate", "download", "split", "train", "swa", "evaluate", "export"]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class WriteRecorder:
    """Paths written under `root` during the `recording()` block, by Python or by safetensors."""

    def __init__(self, root: Path) -> None:
        self.root, self.active, self.written = root.resolve(), False, []
        sys.addaudithook(self._hook)  # hooks cannot be removed; `active` switches it off

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open" and isinstance(args[0], str | bytes | Path) and args[2] & WRITE_FLAGS:
            self._record(args[0])
        elif event == "shutil.copyfile":
            self._record(args[1])

    def _record(self, path: object) -> None:
        path = Path(os.fsdecode(path)).resolve()
        if path.is_relative_to(self.root):
            self.written.append(path.relative_to(self.root))

    @contextlib.contextmanager
    def recording(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        # safetensors writes from Rust, unseen by audit hooks: record the paths it is given
        for name, module in list(sys.modules.items()):
            original = getattr(module, "save_file", None)
            if name.startswith("stages.") and callable(original):
                monkeypatch.setattr(module, "save_file", self._recording(original))
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def _recording(self, save_file):
        def save_and_record(tensors, path, *args, **kwargs):
            self._record(path)
            return save_file(tensors, path, *args, **kwargs)

        return save_and_record


def staged(path: Path) -> bool:
    """Written under a staging name: a `.partial` file or inside a `.partial` directory."""
    return any(part.endswith(PARTIAL_SUFFIX) for part in path.parts)


@pytest.mark.parametrize("swa_epochs", [2, 0])
def test_every_stage_writes_its_outputs_atomically(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch, swa_epochs: int
) -> None:
    work = Workdir.with_raw_data(tmp_path, raw_dir, subset=1000, val_size=200)
    work.set("download.source_dir", str(raw_dir))
    work.set("train.epochs", 2)
    work.set("swa.epochs", swa_epochs)
    work.set("swa.anneal_epochs", 1)
    recorder = WriteRecorder(work.path)
    # dvclive creates a DVC repo when it finds none; that is not a stage output
    (work.path / ".dvc").mkdir()
    for stage in PIPELINE:  # imported first, so the recorder can wrap the writers they import
        importlib.import_module(f"stages.{stage}")
    for stage in PIPELINE:
        with recorder.recording(monkeypatch):
            run_in_process(work, stage)
    outputs = [p for p in recorder.written if not p.parts[0].startswith(".")]
    assert MODELS["swa"].parent in {p.parent for p in outputs if staged(p)}
    direct = sorted({str(p) for p in outputs if not staged(p)})
    assert not direct, f"written under their final names, not atomically: {direct}"
    for path in (TRAIN_DATA, SPLIT_MANIFEST, *MODELS.values()):
        assert (work.path / path).is_file()
