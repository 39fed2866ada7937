from __future__ import annotations

import torch

from stages.data import Images
from stages.engine import Stats
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
