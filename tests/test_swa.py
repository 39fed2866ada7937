from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from fashion_mnist_mlp.config.params import Params, Swa
from fashion_mnist_mlp.config.paths import SWA_RESUME
from fashion_mnist_mlp.stages import swa as swa_stage
from fashion_mnist_mlp.stages.swa import average_weights, recompute_batch_norm
from fashion_mnist_mlp.training.checkpoints import RunKey
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.engine import Stats, evaluate
from fashion_mnist_mlp.training.epoch_log import EpochLog
from fashion_mnist_mlp.training.model import MLP, MLPConfig

# the defaults' kind of network, small: dropout after each hidden layer, then BatchNorm after the
# next linear layer, so the second BatchNorm normalizes what a dropout let through
WITH_BATCH_NORM = MLPConfig(
    hidden=(64, 32), dropout=0.3, batch_norm=True, pixel_mean=0.29, pixel_std=0.35
)


class SnapshotLog:
    """Stands in for EpochLog: records the running model's weights at every epoch."""

    def __init__(self, model: MLP) -> None:
        self.model, self.snapshots, self.lrs = model, [], []

    def log(self, epoch: int, lr: float, train: Stats | None, val: Stats) -> None:
        self.snapshots.append({k: v.clone() for k, v in self.model.state_dict().items()})
        self.lrs.append(lr)


def test_averaged_weights_equal_the_mean_of_the_epoch_snapshots(
    params: Params, small_data: tuple[Images, Images]
) -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32,)))
    cfg = params.swa.model_copy(update={"epochs": 4, "lr": 1e-2, "anneal_epochs": 2})
    log = SnapshotLog(model)
    swa_model = average_weights(model, *small_data, cfg, params.train, start_lr=1e-4, log=log)

    snapshots = log.snapshots[1:]  # the first is logged before any SWA epoch
    assert len(snapshots) == 4
    for key, averaged in swa_model.module.state_dict().items():
        mean = torch.stack([s[key] for s in snapshots]).mean(0)
        torch.testing.assert_close(averaged, mean, rtol=1e-5, atol=1e-6)
    assert not torch.equal(snapshots[0]["net.1.weight"], snapshots[-1]["net.1.weight"])
    # SWALR anneals from the start lr to the SWA lr over anneal_epochs, then holds it
    assert log.lrs[1] == 1e-4 and log.lrs[-1] == 1e-2


def test_zero_epochs_averages_nothing(params: Params, small_data: tuple[Images, Images]) -> None:
    model = MLP(MLPConfig(hidden=(8,)))
    cfg = params.swa.model_copy(update={"epochs": 0})
    swa_model = average_weights(
        model, *small_data, cfg, params.train, start_lr=1e-3, log=SnapshotLog(model)
    )
    assert swa_model.n_averaged.item() == 0


def test_ema_is_the_moving_average_of_every_steps_weights(
    params: Params, small_data: tuple[Images, Images]
) -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32,)))
    cfg = params.swa.model_copy(update={"strategy": "ema", "epochs": 2, "ema_decay": 0.9})
    after_steps = []
    hook = register_optimizer_step_post_hook(
        lambda *_: after_steps.append(model.net[1].weight.detach().clone())
    )
    try:
        averaged = average_weights(
            model, *small_data, cfg, params.train, start_lr=1e-2, log=SnapshotLog(model)
        )
    finally:
        hook.remove()
    assert len(after_steps) == 2 * -(-len(small_data[0]) // params.train.batch_size)
    expected = after_steps[0]  # the first update copies
    for weights in after_steps[1:]:
        expected = 0.9 * expected + 0.1 * weights
    torch.testing.assert_close(averaged.module.net[1].weight, expected)


def test_recomputing_batch_norm_statistics_scores_better_than_keeping_them(
    params: Params, small_data: tuple[Images, Images], monkeypatch
) -> None:
    """SWA averages the weights, not BatchNorm's running statistics: without recomputing them
    the averaged network keeps statistics that belong to other weights."""
    cfg = params.swa.model_copy(update={"epochs": 4, "lr": 0.05, "anneal_epochs": 0})
    train_cfg = params.train.model_copy(update={"batch_size": 100})

    def averaged() -> MLP:
        torch.manual_seed(0)
        model = MLP(MLPConfig(hidden=(64,), batch_norm=True, pixel_mean=0.29, pixel_std=0.35))
        swa = average_weights(model, *small_data, cfg, train_cfg, 0.05, SnapshotLog(model))
        return swa.module.eval()

    recomputed = averaged()
    monkeypatch.setattr(swa_stage, "recompute_batch_norm", lambda *args, **kwargs: None)
    stale = averaged()
    for key in ("net.2.running_mean", "net.2.running_var"):
        assert not torch.allclose(recomputed.state_dict()[key], stale.state_dict()[key])
    torch.testing.assert_close(recomputed.net[1].weight, stale.net[1].weight)  # same weights
    val = small_data[1]
    assert evaluate(recomputed, val).loss < evaluate(stale, val).loss


def average_with_batch_norm(
    params: Params, data: tuple[Images, Images], key: RunKey | None = None, **swa: object
) -> tuple[MLP, EpochLog]:
    """A small network with dropout and BatchNorm, averaged for 2 epochs; the average and the
    log of its validation scores."""
    cfg = Swa.model_validate(params.swa.model_dump() | {"epochs": 2, "anneal_epochs": 1} | swa)
    train_cfg = params.train.model_copy(update={"batch_size": 100})
    model = MLP(WITH_BATCH_NORM)
    log = EpochLog(None, "swa", cfg.epochs)
    averaged = average_weights(model, *data, cfg, train_cfg, 0.01, log, key)
    return averaged.module, log


@pytest.mark.parametrize("strategy", ["swa", "ema"])
def test_the_last_validation_score_logged_is_the_written_models(
    params: Params, small_data: tuple[Images, Images], strategy: str
) -> None:
    torch.manual_seed(0)
    written, log = average_with_batch_norm(params, small_data, strategy=strategy)
    scores = evaluate(written, small_data[1]).metrics("val")
    assert {k: log.history[-1][k] for k in scores} == scores


def test_a_run_resumed_after_its_last_epoch_writes_the_uninterrupted_average(
    params: Params, small_data: tuple[Images, Images], tmp_path: Path, monkeypatch, capsys
) -> None:
    """A run killed once its last epoch's state is saved (say while it writes) trains no epoch
    when rerun: what it computes then must not depend on what the random generators hold,
    which differs from the uninterrupted run's."""
    monkeypatch.chdir(tmp_path)  # the state goes to models/resume/ here
    key = RunKey(params="digest of the params", full="0123456789abcdef" * 4)
    torch.manual_seed(0)
    straight, _ = average_with_batch_norm(params, small_data, key)
    assert (tmp_path / SWA_RESUME).is_file()  # the stage removes it only once it has written
    torch.manual_seed(1)  # another initialization, other draws next
    resumed, _ = average_with_batch_norm(params, small_data, key)
    assert "swa: resuming after epoch 2" in capsys.readouterr().out
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def batch_norms(model: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


def test_batch_norm_statistics_are_those_of_the_network_without_dropout(
    small_data: tuple[Images, Images],
) -> None:
    """The written model normalizes with them in eval mode, where dropout is the identity: they
    are the statistics of the inputs its BatchNorm layers see then, drawn from no RNG."""
    torch.manual_seed(0)
    model = MLP(WITH_BATCH_NORM)
    without = MLP(replace(WITH_BATCH_NORM, dropout=0.0))
    for norm in batch_norms(model):  # statistics to replace, unlike those of a fresh network
        norm.running_mean.fill_(3.0)
    weights = zip(without.state_dict(), model.state_dict().values(), strict=True)  # renumbered
    without.load_state_dict(dict(weights))
    images = small_data[0].images
    recompute_batch_norm(model, images, 100)
    recompute_batch_norm(without, images, 100)
    for ours, reference in zip(batch_norms(model), batch_norms(without), strict=True):
        assert torch.equal(ours.running_mean, reference.running_mean)
        assert torch.equal(ours.running_var, reference.running_var)
        assert ours.momentum == 0.1 and not ours.training
    # ...and those of the batches: the plain mean of their means
    first = model.net[1](model.net[0]((images - 0.29) / 0.35))
    batch_means = torch.stack([first[i : i + 100].mean(0) for i in range(0, len(images), 100)])
    torch.testing.assert_close(batch_norms(model)[0].running_mean, batch_means.mean(0))
