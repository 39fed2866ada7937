"""One epoch's training and one validation pass, and the seeding that makes them repeatable;
the train and swa stages run their epochs through fashion_mnist_mlp/training/loop.py.

The whole split lives in memory as one float tensor (on the GPU when there is one); a batch is
an index into it, so the loop does no per-sample Python work and no DataLoader copying. Under
torchrun each process takes its share of every batch and of the validation set (see
fashion_mnist_mlp/training/distributed.py); the numbers logged are those of the whole batch and set.
"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashion_mnist_mlp.config.losses import LossFn
from fashion_mnist_mlp.config.optimizers import needs_closure
from fashion_mnist_mlp.config.sections import Augment
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.distributed import (
    all_reduce_sum,
    broadcast_buffers,
    rank,
    shard,
    world_size,
)
from fashion_mnist_mlp.training.model import predict_logits


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every RNG a run touches; see PyTorch's notes on randomness for the limits."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # The CPU kernels used here are deterministic already; on CUDA, indexing's backward
        # and cuBLAS need this. (It costs ~1 s of imports, so CPU runs skip it.)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


class Stream(enum.IntEnum):
    """The independent random streams of a run. Each is the first key of its seed: SeedSequence
    pads keys with trailing zeros, so (seed, epoch) and (seed, epoch, 0) would be one stream."""

    TRAIN_SHUFFLE = 1
    TRAIN_DROPOUT = 2
    SWA_SHUFFLE = 3
    SWA_DROPOUT = 4


STREAMS = {  # the stage's (shuffle and augmentation, dropout) streams
    "train": (Stream.TRAIN_SHUFFLE, Stream.TRAIN_DROPOUT),
    "swa": (Stream.SWA_SHUFFLE, Stream.SWA_DROPOUT),
}


def seed_epoch(seed: int, epoch: int, stage: str = "train") -> torch.Generator:
    """Seed one epoch's randomness from (stage, seed, epoch) alone, so a resumed run needs no
    saved RNG state. Returns the shuffle and augmentation generator, the same in every process;
    the global RNG (dropout) is seeded per process too, so processes draw different masks."""
    shuffle, dropout = STREAMS[stage]
    torch.manual_seed(stream_seed(dropout, seed, epoch, rank()))
    return torch.Generator().manual_seed(stream_seed(shuffle, seed, epoch))


def stream_seed(stream: Stream, *keys: int) -> int:
    return int(np.random.SeedSequence((int(stream), *keys)).generate_state(1)[0])


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def augment(
    x: torch.Tensor, cfg: Augment, generator: torch.Generator, batch_size: int | None = None
) -> torch.Tensor:
    """Random horizontal flips and shifts of up to cfg.max_shift pixels, per image, batched.
    With both off, `x` comes back untouched and `generator` is not drawn from.

    Given `batch_size` (the whole batch, of which `x` is this process's share), draws for the
    whole batch and uses this process's share, so every process's generator stays in step."""
    b, h, w = x.shape
    n = b if batch_size is None else batch_size
    mine = (lambda t: t) if batch_size is None else shard
    if cfg.hflip:
        flip = mine(torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None], x.flip(-1), x)
    if cfg.max_shift == 0:
        return x
    s = cfg.max_shift
    shifts = mine(torch.randint(-s, s + 1, (n, 2), generator=generator) + s)
    dy, dx = shifts.T.to(x.device)
    padded = F.pad(x, (s,) * 4)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    return padded[
        torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]


@dataclass(frozen=True)
class Stats:
    loss: float
    """Plain cross-entropy, the same measure on every split and in metrics/test.json."""
    accuracy: float
    objective: float | None = None
    """What training minimizes (with label smoothing, say); None for validation."""

    def metrics(self, split: str) -> dict[str, float]:
        """As logged: `{split}/loss`, `{split}/acc` (and `{split}/objective`)."""
        logged = {f"{split}/loss": self.loss, f"{split}/acc": self.accuracy}
        if self.objective is not None:
            logged[f"{split}/objective"] = self.objective
        return logged


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train_epoch(
    model: nn.Module,
    data: Images,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    *,
    augmentation: Augment | None = None,
    bf16: bool = False,
    after_step: Callable[[], object] | None = None,
) -> Stats:
    """One pass over `data` in a seeded random order; returns the running plain cross-entropy,
    objective and accuracy."""
    model.train()
    device = data.labels.device
    order = torch.randperm(len(data), generator=generator).to(device)
    totals = torch.zeros(3, device=device)  # summed over images: cross-entropy, objective, right
    for start in range(0, len(data), batch_size):
        batch = order[start : start + batch_size]
        idx = shard(batch)
        # index_select gathers a batch twice as fast as x[idx] on CPU
        x, y = data.images.index_select(0, idx), data.labels.index_select(0, idx)
        if augmentation is not None:
            x = augment(x, augmentation, generator, len(batch))
        # DDP averages gradients over processes: weight each share by its size (in one
        # process the weight is exactly 1.0)
        weight = len(y) * world_size() / len(batch)
        logits, loss = step(model, x, y, loss_fn, optimizer, weight, bf16)
        if after_step is not None:
            after_step()
        totals[0] += F.cross_entropy(logits, y, reduction="sum")
        totals[1] += loss * len(y)
        totals[2] += (logits.argmax(1) == y).sum()
    loss_sum, objective_sum, right = (v / len(data) for v in all_reduce_sum(totals).tolist())
    return Stats(loss_sum, right, objective_sum)


def step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    weight: float,
    bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns the logits and loss from before the update."""
    first: list[tuple[torch.Tensor, torch.Tensor]] = []
    closing = needs_closure(optimizer)
    # LBFGS evaluates the closure several times per step: each evaluation must see the same
    # function, so the dropout masks are redrawn from the same RNG state every time, and
    # BatchNorm's running statistics take one update per step, from the first evaluation
    replay_dropout = _rng_replayer(x.device) if closing else None
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)] if closing else []
    momenta = [m.momentum for m in norms]

    def closure() -> torch.Tensor:
        if replay_dropout is not None:
            replay_dropout()
        if first:
            for norm in norms:
                norm.momentum = 0.0  # running = (1 - 0) x running: unchanged
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = loss_fn(logits, y) if len(y) else logits.sum()  # a share can be empty
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        if not first:
            first.append((logits.detach().float(), loss.detach()))
        # every process must see the same loss, or their line searches would part ways
        return all_reduce_sum((loss * weight / world_size()).detach()) if closing else loss

    if closing:
        optimizer.step(closure)
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    else:
        closure()
        optimizer.step()
    return first[0]


def _rng_replayer(device: torch.device) -> Callable[[], None]:
    """A function that puts the RNGs dropout draws from back to where they are now."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def replay() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)

    return replay


def evaluate(model: nn.Module, data: Images) -> Stats:
    """Plain cross-entropy and accuracy, comparable with the test metrics of the evaluate stage.
    Every process scores its share with rank 0's model, buffers included."""
    broadcast_buffers(model)
    images, labels = shard(data.images), shard(data.labels)
    logits = predict_logits(model, images)
    totals = torch.stack([
        F.cross_entropy(logits, labels, reduction="sum"),
        (logits.argmax(1) == labels).sum().float(),
    ])  # fmt: skip
    loss_sum, right = all_reduce_sum(totals).tolist()
    return Stats(loss_sum / len(data), right / len(data))


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]
