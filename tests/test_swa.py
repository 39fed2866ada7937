from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from stages import swa as swa_stage
from stages.data import Images
from stages.engine import Stats, evaluate
from stages.model import MLP, MLPConfig
from stages.params import Params
from stages.swa import average_weights


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


def test_update_bn_recomputes_batch_norm_statistics_and_skipping_it_scores_worse(
    params: Params, small_data: tuple[Images, Images], monkeypatch
) -> None:
    """SWA averages the weights, not BatchNorm's running statistics: without update_bn the
    averaged network keeps statistics that belong to other weights."""
    cfg = params.swa.model_copy(update={"epochs": 4, "lr": 0.05, "anneal_epochs": 0})
    train_cfg = params.train.model_copy(update={"batch_size": 100})

    def averaged() -> MLP:
        torch.manual_seed(0)
        model = MLP(MLPConfig(hidden=(64,), batch_norm=True, pixel_mean=0.29, pixel_std=0.35))
        swa = average_weights(model, *small_data, cfg, train_cfg, 0.05, SnapshotLog(model))
        return swa.module.eval()

    recomputed = averaged()
    monkeypatch.setattr(swa_stage, "update_bn", lambda *args, **kwargs: None)
    stale = averaged()
    for key in ("net.2.running_mean", "net.2.running_var"):
        assert not torch.allclose(recomputed.state_dict()[key], stale.state_dict()[key])
    torch.testing.assert_close(recomputed.net[1].weight, stale.net[1].weight)  # same weights
    val = small_data[1]
    assert evaluate(recomputed, val).loss < evaluate(stale, val).loss
