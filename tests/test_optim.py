from __future__ import annotations

import pytest
import torch

from stages.model import MLP, MLPConfig
from stages.optim import build_loss, build_optimizer, build_scheduler, current_lr
from stages.params import Params

OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad"]
SCHEDULERS = ["none", "step", "multistep", "exponential", "cosine", "onecycle"]


def one_step(
    params: Params, optimizer: str = "adamw", scheduler: str = "none", loss: str = "cross_entropy"
):
    cfg = params.train.model_copy(
        update={"optimizer": optimizer, "scheduler": scheduler, "loss": loss}
    )
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(16,)))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    sched, per_batch = build_scheduler(opt, cfg, steps_per_epoch=5)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(8, 28, 28), torch.arange(8) % 10
    build_loss(cfg)(model(x), y).backward()
    opt.step()
    return before, list(model.parameters()), opt, sched, per_batch


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_moves_the_weights(params: Params, name: str) -> None:
    before, after, opt, _, _ = one_step(params, optimizer=name)
    assert type(opt).__name__.lower() == name
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_and_steps(params: Params, name: str) -> None:
    _, _, opt, sched, per_batch = one_step(params, scheduler=name)
    if name == "none":
        assert sched is None
        return
    assert per_batch == (name == "onecycle")
    lrs = [current_lr(opt)]
    for _ in range(30):
        sched.step()
        lrs.append(current_lr(opt))
    assert len(set(lrs)) > 1, f"{name} never changed the lr: {lrs}"


def test_onecycle_peaks_at_the_configured_lr(params: Params) -> None:
    cfg = params.train.model_copy(update={"scheduler": "onecycle", "epochs": 2})
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    sched, _ = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(current_lr(opt))
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(cfg.learning_rate, rel=0.05)
    assert lrs[0] == pytest.approx(cfg.learning_rate / cfg.schedulers.onecycle.div_factor)


@pytest.mark.parametrize("name", ["cross_entropy", "nll"])
def test_losses(params: Params, name: str) -> None:
    cfg = params.train.model_copy(update={"loss": name})
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    targets = torch.tensor([0, 1])
    loss = build_loss(cfg)(logits, targets)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    if name == "nll":  # the lesson's NLLLoss on log-softmax equals plain cross entropy
        torch.testing.assert_close(loss, plain)
    else:  # label smoothing raises the loss of confident, correct predictions
        assert loss > plain
