"""Data parallelism for the train and swa stages: the same code runs as one process or as N
DistributedDataParallel processes started by torchrun (gloo on CPU, NCCL on GPU).

Every process holds the whole split and walks the same shuffled order; each takes its share of
every batch (`shard`), and the loss is weighted so DDP's gradient average equals the gradient of
the whole batch, so `train.batch_size` and `train.lr` mean the same at any process count. Only
rank 0 writes files. Without torchrun, `rank()` is 0, `world_size()` is 1 and every helper here
is the identity.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.params import Params, load_params
from fashion_mnist_mlp.training.numerics import pin

LAUNCHED_ENV = "LOCAL_RANK"
"""Set by torchrun in each process it starts."""


def launched_by_torchrun() -> bool:
    return LAUNCHED_ENV in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(t: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of `t` along dim 0 (shares differ by at most one row)."""
    return t.tensor_split(world_size())[rank()] if dist.is_initialized() else t


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) into every process: DDP syncs them
    only at the start of a forward, so after an epoch each rank holds its own last share's."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all processes, in place; unchanged in a single process."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_bytes(data: bytes | None, device: torch.device) -> bytes | None:
    """Rank 0's `data` (None included) in every process; `data` itself in a single one."""
    if not dist.is_initialized():
        return data
    size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if size.item() < 0:
        return None
    buffer = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
        if is_main() and data  # frombuffer refuses an empty buffer
        else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    )
    dist.broadcast(buffer, src=0)
    return buffer.cpu().numpy().tobytes()


def require_same(value: int, what: str, device: torch.device) -> None:
    """Stop every process, with one message, unless all of them hold the same `value`."""
    if not dist.is_initialized():
        return
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise StageError(
            f"the processes disagree on {what}: rank {rank()} has {value}, the ranks range from "
            f"{low.item()} to {high.item()}. Give every machine the same checkout, params.yaml "
            "and data (dvc pull), or delete rank 0's models/resume/ to start over"
        )


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` under DistributedDataParallel when there is more than one process."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # gradients as views into DDP's buckets: no copy into the buckets and back each step
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group when started by it, and yield this process's device
    (cuda:LOCAL_RANK on GPU). Callers must drop their DDP model and optimizer before the block
    ends (keep them in a function called inside it): a gloo group destroyed while they live can
    hang at exit."""
    if not launched_by_torchrun():
        yield device
        return
    if device.type == "cuda":
        local_rank = int(os.environ[LAUNCHED_ENV])
        if local_rank >= torch.cuda.device_count():
            raise StageError(
                f"process {local_rank} of this machine has no GPU: {torch.cuda.device_count()} "
                "CUDA devices; start at most that many processes (train.nproc)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        gc.collect()  # DDP's reducer can sit in a reference cycle that outlives the caller
        dist.destroy_process_group()


def threads_per_process(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(module: str, nproc: int) -> int:
    """Run `python -m module` as `nproc` torchrun workers on this machine (torchrun --standalone)
    and return their exit status. Each worker gets an equal share of the cores, unless
    OMP_NUM_THREADS says otherwise."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    # torchrun's agent reports a failed worker with a traceback and a page of details; the
    # worker has printed what went wrong and the summary below names it, so silence the agent.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", module]))
    except ChildFailedError as e:
        # the first process to fail is the cause; torchrun stopped the others
        first, failure = e.get_first_failure()
        print(f"{module}: {len(e.failures)} of {nproc} processes failed, first rank {first} "
              f"(exit {failure.exitcode})", file=sys.stderr)  # fmt: skip
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:  # torchrun's agent got SIGINT/SIGTERM and stopped the workers
        print(f"{module}: interrupted ({e.sigval.name}); no output was written", file=sys.stderr)
        return 128 + e.sigval
    return 0


def run_data_parallel(module: str, work: Callable[[Params, torch.device], None]) -> None:
    """The main() of a stage that trains (`module`): read the params, start `train.nproc`
    processes through torchrun when asked to, and run `work(params, device)` in each process
    (or in this one)."""
    params = load_params()
    device = machine_device(params.train.device, params.train.nproc)
    launch_if_asked(module, params.train.nproc, device)
    pin(params.numerics, params.train.nproc, params.train)
    with process_group(device) as device:
        work(params, device)


def machine_device(name: str, nproc: int) -> torch.device:
    """The device train.device names on this machine, refused if it lacks it or, unless
    torchrun started this process, has fewer GPUs than train.nproc asks for (one per GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError(
            "train.device = 'cuda' but no CUDA device is available: use 'auto' or 'cpu'"
        )
    if name == "cuda" and nproc > torch.cuda.device_count() and not launched_by_torchrun():
        raise StageError(
            f"train.nproc = {nproc} but this machine has {torch.cuda.device_count()} CUDA "
            "device(s): one process per GPU; lower train.nproc or set train.device: cpu"
        )
    return torch.device(name)


def launch_if_asked(module: str, nproc: int, device: torch.device) -> None:
    """In a process torchrun did not start, with nproc > 1: run `module` as nproc workers
    instead and exit with their status. Otherwise return, and this process does the work."""
    if nproc == 1 or launched_by_torchrun():
        return
    sys.exit(launch(module, nproc))
