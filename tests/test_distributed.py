"""train and swa as DistributedDataParallel processes: 2 gloo processes on CPU, real torchrun.

Run as a module under torchrun, this file is also the worker of the first test:
    python -m torch.distributed.run --standalone --nproc-per-node=2 -m tests.test_distributed OUT
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.params import Params, load_params
from fashion_mnist_mlp.config.paths import MODELS, SPLIT_DIR, SWA_MODEL, TRAIN_MODEL, TRAIN_RESUME
from fashion_mnist_mlp.config.sections import Augment
from fashion_mnist_mlp.training.checkpoints import save_model
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.distributed import is_main, process_group, wrap
from fashion_mnist_mlp.training.engine import Stats, train_epoch
from fashion_mnist_mlp.training.files import PARTIAL_SUFFIX
from fashion_mnist_mlp.training.model import MLP, MLPConfig

from .conftest import COMMITTED_PARAMS, ROOT, Workdir


def one_epoch(params: Params) -> tuple[MLP, Stats]:
    """Three SGD steps over 9 images in batches of 4, with flips and shifts, from a fixed init.
    In two processes the shares of the batches are 2+2, 2+2 and 1+0: uneven, and one empty."""
    g = torch.Generator().manual_seed(0)
    data = Images(torch.rand(9, 28, 28, generator=g), torch.randint(0, 10, (9,), generator=g))
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(16,), dropout=0.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    stats = train_epoch(
        wrap(model, torch.device("cpu")), data, build_loss(params.train), optimizer, 4,
        torch.Generator().manual_seed(1), augmentation=Augment(hflip=True, max_shift=2),
    )  # fmt: skip
    return model, stats


def worker(out: Path) -> None:
    with process_group(torch.device("cpu")):
        committed_params = out / f"params.{os.environ.get('RANK', '0')}.yaml"  # one per process
        committed_params.write_text(COMMITTED_PARAMS)
        model, stats = one_epoch(load_params(committed_params))
        if is_main():
            save_file(model.state_dict(), out / "weights.safetensors")
            (out / "stats.json").write_text(json.dumps([stats.loss, stats.accuracy]))


def torchrun(nproc: int) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def test_two_processes_take_the_steps_one_process_takes(tmp_path: Path, params: Params) -> None:
    result = subprocess.run(
        [sys.executable, *torchrun(2), "-m", "tests.test_distributed", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    model, stats = one_epoch(params)
    two = load_file(tmp_path / "weights.safetensors")
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(two[name], weight, rtol=1e-5, atol=1e-6)
    loss, accuracy = json.loads((tmp_path / "stats.json").read_text())
    assert loss == pytest.approx(stats.loss, rel=1e-5)
    assert accuracy == stats.accuracy


# ---- the stages themselves, on a real (subset) split ----

EPOCHS, SWA_EPOCHS = 4, 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def column(tsv: Path, name: str) -> list[float]:
    with tsv.open() as f:
        return [float(row[name]) for row in csv.DictReader(f, delimiter="\t")]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Workdir:
    """A working directory with a 5,000/1,000 split of the real training images."""
    work = Workdir.with_raw_data(tmp_path_factory.mktemp("split"), raw_dir, 6000, 1000)
    work.set("train.epochs", EPOCHS)
    work.set("swa.epochs", SWA_EPOCHS)
    work.set("swa.anneal_epochs", 1)
    result = work.run("split")
    assert result.returncode == 0, result.stderr
    return work


def copy_of(work: Workdir, path: Path) -> Workdir:
    shutil.copytree(work.path, path)
    return Workdir(path)


@pytest.fixture(scope="module")
def two_processes(split: Workdir, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """train then swa with train.nproc = 2, started the way dvc repro starts them."""
    work = copy_of(split, tmp_path_factory.mktemp("ddp") / "work")
    work.set("train.nproc", 2)
    work.set("numerics.threads", 2)  # one thread per process
    before = set(work.snapshot())
    runs = {stage: work.run(stage) for stage in ("train", "swa")}
    for result in runs.values():
        assert result.returncode == 0, result.stdout + result.stderr
    return {"work": work, "runs": runs, "new": set(work.snapshot()) - before}


def test_train_and_swa_in_two_processes_converge_and_write_once(two_processes: dict) -> None:
    work, runs = two_processes["work"].path, two_processes["runs"]
    assert "in 2 processes" in runs["train"].stdout
    for stage, model in (("train", TRAIN_MODEL), ("swa", SWA_MODEL)):
        out = runs[stage].stdout
        assert out.count(f"wrote {model}") == 1, out  # only rank 0 writes
        assert out.count(f"{stage} epoch 1/") == 1, out  # and logs
        resources = json.loads((work / f"metrics/resources/{stage}.json").read_text())
        assert resources["processes"] == 2
    val_loss = column(work / "metrics/train/plots/metrics/val/loss.tsv", "loss")
    val_acc = column(work / "metrics/train/plots/metrics/val/acc.tsv", "acc")
    assert len(val_loss) == len(val_acc) == EPOCHS + 1  # one row per epoch, not one per process
    assert val_loss[-1] < 0.6 * val_loss[0] and val_acc[-1] > 0.75
    swa_acc = column(work / "metrics/swa/plots/metrics/val/acc.tsv", "acc")
    assert len(swa_acc) == SWA_EPOCHS + 1 and swa_acc[-1] > 0.75
    # atomic: no staging file, no leftover training state, nothing but the outputs
    assert not any(PARTIAL_SUFFIX in name for name in two_processes["new"])
    assert not (work / TRAIN_RESUME).exists()
    assert {Path(name).parts[0] for name in two_processes["new"]} == {"models", "metrics"}


def test_torchrun_started_by_hand_writes_the_same_model(
    split: Workdir, two_processes: dict, tmp_path: Path
) -> None:
    work = copy_of(split, tmp_path / "work")
    work.set("train.nproc", 2)
    work.set("numerics.threads", 2)  # one thread per process
    result = work.run("train", *torchrun(2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(work.path / TRAIN_MODEL) == sha256(two_processes["work"].path / TRAIN_MODEL)


def test_a_failure_in_the_processes_is_one_clean_error(split: Workdir, tmp_path: Path) -> None:
    work = copy_of(split, tmp_path / "work")
    work.set("train.nproc", 2)
    work.set("numerics.threads", 2)  # one thread per process
    shutil.rmtree(work.path / SPLIT_DIR)
    before = work.snapshot()
    result = work.run("train")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(("error: ", "[rank 1] error: ")) and "is missing" in first
    assert work.snapshot() == before


# ---- resume across machines: two torchrun "nodes" on loopback, each in its own directory ----


def start(work: Workdir, *launcher: str, stage: str = "train") -> subprocess.Popen[str]:
    # one thread per process, as the stage's own launcher gives each of 2 processes on 2 cores:
    # the thread count changes the summation order, and so the bytes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *launcher, "-m", f"fashion_mnist_mlp.stages.{stage}"], cwd=work.path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_after_first_saved_epoch(work: Workdir) -> None:
    proc = start(work)
    deadline = time.monotonic() + 120
    while not (work.path / TRAIN_RESUME).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no state was saved"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_as_two_nodes(
    nodes: list[Workdir], rendezvous: str = "static", stage: str = "train"
) -> tuple[list[subprocess.Popen], list[str]]:
    """`stage` under torchrun on each "machine" (directory), joined over loopback; their exit
    and output. static: node 0 is rank 0 and hosts the store; c10d: the agents agree on ranks
    themselves, as docs/torchrun.md's multi-node commands do."""
    port = free_port()
    joined = {
        "static": lambda i: [
            f"--node-rank={i}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
        ],
        "c10d": lambda i: [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=fashion",
        ],
    }[rendezvous]
    launcher = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    procs = [start(node, *launcher, *joined(i), stage=stage) for i, node in enumerate(nodes)]
    try:
        return procs, [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_two_machines_joined_by_c10d_write_the_bytes_of_two_processes_on_one(
    split: Workdir, two_processes: dict, tmp_path: Path
) -> None:
    nodes = [copy_of(split, tmp_path / f"node{i}") for i in range(2)]
    for node in nodes:
        node.set("train.nproc", 2)
        node.set("numerics.threads", 2)  # one thread per process
    procs, outputs = run_as_two_nodes(nodes, rendezvous="c10d")
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
    written = [node for node in nodes if (node.path / TRAIN_MODEL).exists()]
    assert len(written) == 1  # rank 0's machine, whichever the rendezvous made rank 0
    assert sha256(written[0].path / TRAIN_MODEL) == sha256(two_processes["work"].path / TRAIN_MODEL)


@pytest.mark.slow
def test_ranks_on_other_machines_resume_from_rank_0s_state(
    split: Workdir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an interrupted run, only rank 0's machine has models/resume/. Every rank must still
    continue after the same epoch, and the run must end with the uninterrupted bytes."""
    nodes = [copy_of(split, tmp_path / f"node{i}") for i in range(2)]
    for node in nodes:
        node.set("train.nproc", 2)
        node.set("numerics.threads", 2)  # one thread per process
        node.set("train.epochs", 8)
    straight = copy_of(nodes[1], tmp_path / "straight")
    kill_after_first_saved_epoch(nodes[0])
    assert (nodes[0].path / TRAIN_RESUME).exists() and not (nodes[1].path / TRAIN_RESUME).exists()

    procs, outputs = run_as_two_nodes(nodes)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
    assert "train: resuming after epoch" in outputs[0]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the nodes had, whatever the core count
    result = straight.run("train")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha256(nodes[0].path / TRAIN_MODEL) == sha256(straight.path / TRAIN_MODEL)
    assert not (nodes[1].path / TRAIN_MODEL).exists()  # rank 1 writes nothing


@pytest.mark.parametrize(
    ("stage", "dotted", "value"),
    [("train", "train.optimizers.adamw.lr", 0.001), ("swa", "swa.lr", 0.002)],
)
def test_machines_with_different_params_refuse_to_run_together(
    split: Workdir, tmp_path: Path, stage: str, dotted: str, value: float
) -> None:
    """Each rank reads its own machine's params.yaml: ranks that differ would train apart and
    rank 0 would write a model of mixed gradients, so the stage refuses before any epoch."""
    nodes = [copy_of(split, tmp_path / f"node{i}") for i in range(2)]
    for node in nodes:
        node.set("train.nproc", 2)
        node.set("numerics.threads", 2)  # one thread per process
        if stage == "swa":  # its input, the same file on both machines
            torch.manual_seed(0)
            save_model(MLP(MLPConfig(hidden=(16,))), node.path / TRAIN_MODEL, {"final_lr": 1e-3})
    nodes[1].set(dotted, value)
    procs, outputs = run_as_two_nodes(nodes, stage=stage)
    assert all(proc.returncode != 0 for proc in procs), outputs
    for out in outputs:  # the stage prints the refusal and no other line (torchrun adds its own)
        stage_lines = [
            line for line in out.splitlines() if line.startswith(("error", "[rank", stage))
        ]
        assert len(stage_lines) == 1, out
        assert "error: the processes disagree on params, data and code" in stage_lines[0], out
    assert not (nodes[0].path / MODELS[stage]).exists()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
