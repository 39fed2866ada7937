"""Every output is written atomically: the whole pipeline runs (in this process, on a small real
subset) while an audit hook records each file opened for writing, copied or renamed, and each
safetensors write. Any write to a final output name, rather than to a staging name that is then
renamed into place, fails the test. Then: each write is flushed to the disk before its rename
(power loss), and a folder's write killed at any point leaves one complete copy."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fashion_mnist_mlp.config.paths import MODELS, SPLIT_MANIFEST, TRAIN_DATA
from fashion_mnist_mlp.stages.validate import remove_staging_leftovers
from fashion_mnist_mlp.training.files import PARTIAL_SUFFIX, atomic_dir, atomic_path

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
            if name.startswith("fashion_mnist_mlp.") and callable(original):
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
        importlib.import_module(f"fashion_mnist_mlp.stages.{stage}")
    for stage in PIPELINE:
        with recorder.recording(monkeypatch):
            run_in_process(work, stage)
    outputs = [p for p in recorder.written if not p.parts[0].startswith(".")]
    assert MODELS["swa"].parent in {p.parent for p in outputs if staged(p)}
    direct = sorted({str(p) for p in outputs if not staged(p)})
    assert not direct, f"written under their final names, not atomically: {direct}"
    for path in (TRAIN_DATA, SPLIT_MANIFEST, *MODELS.values()):
        assert (work.path / path).is_file()


class FileEvents:
    """The fsyncs (by the path of the descriptor flushed) and renames that the code under test
    makes, in order; the real calls are made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, ...]] = []
        fsync, rename, replace = os.fsync, os.rename, os.replace

        def recorded_fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            fsync(fd)

        def recorded(real: Callable[..., None]) -> Callable[..., None]:
            def rename_and_record(source: Path, target: Path) -> None:
                self.events.append(("rename", str(source), str(target)))
                real(source, target)

            return rename_and_record

        monkeypatch.setattr(os, "fsync", recorded_fsync)
        monkeypatch.setattr(os, "rename", recorded(rename))
        monkeypatch.setattr(os, "replace", recorded(replace))


def test_atomic_path_flushes_the_file_before_its_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power loss then leaves the old file or the new one, whole (docs/pipeline.md, "SIGKILL (or
    power loss)"): the bytes are on the disk before the name points at them."""
    target = tmp_path.resolve() / "state.safetensors"
    recorder = FileEvents(monkeypatch)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"state")
    assert recorder.events == [
        ("fsync", str(tmp)),
        ("rename", str(tmp), str(target)),
        ("fsync", str(target.parent)),
    ]


def test_atomic_dir_flushes_every_file_before_the_swap_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path.resolve() / "eval"
    target.mkdir()  # an earlier output, replaced
    recorder = FileEvents(monkeypatch)
    with atomic_dir(target) as staging:
        (staging / "sub").mkdir()
        for name in ("a.csv", "sub/b.csv"):
            (staging / name).write_text(name)
    renames = [i for i, event in enumerate(recorder.events) if event[0] == "rename"]
    flushed_first = {event[1] for event in recorder.events[: renames[0]]}
    assert flushed_first == {str(staging / p) for p in ("a.csv", "sub/b.csv", "sub", "")}
    into_place = next(i for i in renames if recorder.events[i][2] == str(target))
    assert ("fsync", str(tmp_path.resolve())) in recorder.events[into_place:]
    assert sorted(p.name for p in target.rglob("*")) == ["a.csv", "b.csv", "sub"]


KILLED = 77
OLD = {"a.csv": "old a", "c.csv": "old c"}
NEW = {"a.csv": "new a", "b.csv": "new b"}


def write_killed(path: Path, files: dict[str, str], kill_at: int) -> bool:
    """atomic_dir(path) writing `files` (each through atomic_path, as export does), in a forked
    process that ends at once, with no cleanup (as SIGKILL or a power loss would), instead of
    making its `kill_at`-th rename or deletion. True if it ended so, False if it finished."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            calls = itertools.count()
            for name in ("rename", "replace", "unlink", "rmdir"):  # shutil.rmtree's too
                setattr(os, name, _killed_at(getattr(os, name), calls, kill_at))
            with atomic_dir(path) as staging:
                for name, text in files.items():
                    with atomic_path(staging / name) as tmp:
                        tmp.write_text(text)
            code = 0
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, KILLED), f"the write failed (exit {code}) instead of being killed"
    return code == KILLED


def _killed_at(real: Callable[..., Any], calls: Iterator[int], kill_at: int) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == kill_at:
            os._exit(KILLED)
        return real(*args, **kwargs)

    return call


def contents(folder: Path) -> dict[str, str] | None:
    if not folder.exists():
        return None
    return {p.name: p.read_text() for p in folder.iterdir()}


@pytest.mark.parametrize("earlier", [OLD, None], ids=["over-an-output", "first-write"])
def test_a_folder_write_killed_at_any_point_leaves_one_complete_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, earlier: dict[str, str] | None
) -> None:
    """Killed before each of its renames and deletions in turn, then validate's cleanup: the
    output is the earlier copy or the new one, whole, never a mix, never lost; once the new
    copy is kept, every later kill keeps it; no staging folder stays."""
    monkeypatch.chdir(tmp_path)
    output = Path("metrics/eval")  # under a folder validate cleans
    kept = []
    for kill_at in itertools.count():
        shutil.rmtree("metrics", ignore_errors=True)
        if earlier is not None:
            output.mkdir(parents=True)
            for name, text in earlier.items():
                (output / name).write_text(text)
        if not write_killed(output, NEW, kill_at):
            break
        remove_staging_leftovers()
        kept.append(contents(output))
        assert not [*Path("metrics").rglob(f"*{PARTIAL_SUFFIX}")], kill_at
    assert contents(output) == NEW  # the uninterrupted write
    # a kill before each file's rename into staging and its cleanup, and each commit rename
    assert len(kept) >= 2 * len(NEW) + 2 + (earlier is not None)
    assert all(copy in (earlier, NEW) for copy in kept), f"lost or mixed: {kept}"
    switched = kept.index(NEW) if NEW in kept else len(kept)
    assert kept == [earlier] * switched + [NEW] * (len(kept) - switched), kept


def test_a_folder_write_after_a_killed_one_finishes(tmp_path: Path) -> None:
    """What a kill left at any point, no cleanup run: the next write of the folder succeeds."""
    output = tmp_path / "eval"
    for kill_at in itertools.count():
        shutil.rmtree(tmp_path)
        output.mkdir(parents=True)
        if not write_killed(output, NEW, kill_at):
            break
        assert not write_killed(output, OLD, kill_at=-1)
        assert contents(output) == OLD
        assert [p.name for p in tmp_path.iterdir()] == ["eval"], kill_at
