"""Two processes (gloo, CPU): head growth before the DDP wrap, BatchNorm statistics, and the errors.

One spawn runs every scenario one after the other on both ranks and saves what each rank saw
(tensors gathered with ``all_gather``, or the message of the error each rank raised):

* an ``IncrementalClassifier`` that grows at every experience start is trained (its new rows
  move) and identical on both ranks: it grew before DDP wrapped the model, so DDP synced it;
* BatchNorm running statistics, which DDP leaves per rank after the last step, are rank 0's on
  every rank once an experience ends (what the CL methods read and the test pass uses);
* ``RankConsistency`` names the parameter, the CL state entry and the rank that a deliberate
  perturbation of one rank changed, at the end of the fit or at the next checked step;
* a training loader that is not split across the processes is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from lightning_cl import ContinualModule
from lightning_cl.callbacks.rank_consistency import RankConsistency
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.models import Classifier, IncrementalClassifier
from tests.conftest import make_tensor_stream, quiet_trainer, run_two_processes

NAMES = ["growth", "batchnorm", "perturbed_at_end", "perturbed_mid_fit", "value", "length", "keys"]
NAMES += ["sampler_lightning"]
NAMES += ["sampler_unsharded", "sampler_sharded"]


def stream(cls: type[StreamDataModule] = StreamDataModule, batch_size: int = 8) -> StreamDataModule:
    dm = make_tensor_stream(num_experiences=3, per_class=16, num_classes=6)
    return cls(dm.train_stream, dm.test_stream, batch_size=batch_size, shuffle_seed=0)


def gather(trainer: L.Trainer, tensor: Tensor) -> Tensor:
    return trainer.strategy.all_gather(tensor.detach().clone()).reshape(trainer.world_size, *tensor.shape).cpu()


class HeadWatch(L.Callback):
    """The head's weight when training starts (grown, DDP-wrapped) and when the fit ends, from both ranks."""

    def __init__(self) -> None:
        self.start: list[Tensor] = []
        self.end: list[Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start.append(gather(trainer, pl_module.module.backbone[-1].classifier.weight))  # type: ignore[union-attr, index]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end.append(gather(trainer, pl_module.module.backbone[-1].classifier.weight))  # type: ignore[union-attr, index]


def growth() -> dict[str, Any]:
    torch.manual_seed(0)
    head = IncrementalClassifier(16, initial_out_features=2)
    model = ContinualModule(Classifier(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), head), lr=0.1))
    watch = HeadWatch()
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2, callbacks=[watch])
    dm = stream()
    for _ in range(dm.num_experiences):  # no initial test: the head grows when each experience starts
        trainer.fit(model, datamodule=dm)
    return {"start": watch.start, "end": watch.end}


class StatsWatch(L.Callback):
    def __init__(self) -> None:
        self.stats: list[Tensor] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bn = pl_module.module.backbone[1]  # type: ignore[union-attr, index]
        self.stats.append(gather(trainer, torch.cat([bn.running_mean, bn.running_var])))


def batchnorm() -> dict[str, Any]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 6))
    watch = StatsWatch()
    trainer = quiet_trainer(devices=2, strategy="ddp", callbacks=[watch])
    trainer.fit(ContinualModule(Classifier(net, lr=0.1)), datamodule=stream())
    return {"stats": watch.stats}


class Perturb(L.Callback):
    """Moves one weight of rank 1 outside the optimizer, after optimizer step ``step``."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.module.backbone[2].bias[3] += 1e-3  # type: ignore[union-attr, index]


class RankState(ContinualCallback):
    """A CL method whose state depends on the process: a value (``"value"``), a length (``"length"``) or
    its entries (``"keys"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def state_dict(self) -> dict[str, Any]:
        rank = self._rank
        if self.kind == "value":
            return {"counts": torch.tensor([3.0, 4.0 + rank])}
        if self.kind == "length":
            return {"counts": torch.zeros(2 + rank)}
        return {"counts": torch.zeros(2), **({"extra": torch.ones(1)} if rank else {})}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rank = trainer.global_rank


def small_model() -> ContinualModule:
    torch.manual_seed(0)
    return ContinualModule(Classifier(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 6)), lr=0.1))


def raised(callbacks: list[L.Callback], dm: StreamDataModule | None = None, **trainer_args: Any) -> str:
    """The message of the error one fit raises on this rank ("" when none)."""
    trainer = quiet_trainer(devices=2, strategy="ddp", callbacks=callbacks, **trainer_args)
    try:
        trainer.fit(small_model(), datamodule=dm or stream())
    except Exception as error:  # both ranks raise: every collective was still matched
        return f"{type(error).__name__}: {error}"
    return ""


class Batches(Sampler[list[int]]):
    """A user's batch sampler: consecutive index batches, no ``batch_size`` attribute for Lightning to rebuild it."""

    def __init__(self, size: int, per_batch: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.size, self.per_batch = size, per_batch
        self.num_replicas, self.rank = num_replicas, rank

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(self.rank, self.size, self.num_replicas))
        return iter([order[i : i + self.per_batch] for i in range(0, len(order), self.per_batch)])

    def __len__(self) -> int:
        return -(-len(range(self.rank, self.size, self.num_replicas)) // self.per_batch)


class UserBatches(StreamDataModule):
    """A datamodule whose training loader draws with the user's batch sampler, sharded or not."""

    sharded = False

    def train_dataloader(self) -> DataLoader:
        data = self.train_stream[self.current_experience].dataset
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.sharded else (1, 0)  # type: ignore[union-attr]
        return DataLoader(data, batch_sampler=Batches(len(data), 4, world, rank))  # type: ignore[arg-type]


class ShardedUserBatches(UserBatches):
    sharded = True


def _worker(rank: int, out: str) -> None:
    results: dict[str, Any] = {
        "growth": growth(),
        "batchnorm": batchnorm(),
        "perturbed_at_end": raised([Perturb(1, 1), RankConsistency()], max_epochs=3),
        "perturbed_mid_fit": raised([Perturb(1, 1), RankConsistency(every_n_steps=2)], max_epochs=3),
        "value": raised([RankState("value"), RankConsistency()]),
        "length": raised([RankState("length"), RankConsistency()]),
        "keys": raised([RankState("keys"), RankConsistency()]),
        "sampler_lightning": raised([], stream(UserBatches)),
        "sampler_unsharded": raised([], stream(UserBatches), use_distributed_sampler=False),
        "sampler_sharded": raised([RankConsistency()], stream(ShardedUserBatches), use_distributed_sampler=False),
    }
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp_checks")
    run_two_processes(_worker, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.ddp
def test_every_scenario_ran(ranks: list[dict[str, Any]]) -> None:
    assert sorted(ranks[0]) == sorted(ranks[1]) == sorted(NAMES)


@pytest.mark.ddp
def test_head_grown_at_experience_start_is_trained_and_identical(ranks: list[dict[str, Any]]) -> None:
    growth = ranks[0]["growth"]
    assert [w.shape[1] for w in growth["end"]] == [2, 4, 6]  # grown to the classes seen so far
    for k, (start, end) in enumerate(zip(growth["start"], growth["end"])):
        torch.testing.assert_close(start[0], start[1], rtol=0, atol=0)  # DDP broadcast the grown head
        torch.testing.assert_close(end[0], end[1], rtol=0, atol=0)  # and synced its gradients
        new_rows = slice(2 * k, 2 * k + 2)
        assert (end[0, new_rows] - start[0, new_rows]).abs().max() > 1e-3  # the new rows were trained
    torch.testing.assert_close(growth["end"][0][0], growth["start"][1][0, :2])  # old rows carried over


@pytest.mark.ddp
def test_batchnorm_statistics_are_rank_zeros_after_the_experience(ranks: list[dict[str, Any]]) -> None:
    (stats,) = ranks[0]["batchnorm"]["stats"]
    torch.testing.assert_close(stats[0], stats[1], rtol=0, atol=0)
    assert stats[0].abs().sum() > 0


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 32 samples, 8 per rank and step, 3 epochs: 6 steps; rank 1 moved after step 1
        ("perturbed_at_end", "at the end of a fit (global step 6, experiences trained: 1): 1 of 4 entries"),
        ("perturbed_mid_fit", "at global step 2: 1 of 4 entries"),
    ],
)
def test_a_diverging_rank_is_named(ranks: list[dict[str, Any]], name: str, expected: str) -> None:
    for r in range(2):  # every rank raises the same error (none is left waiting in a collective)
        message = ranks[r][name]
        assert message.startswith("RuntimeError: RankConsistency: the processes disagree")
        assert expected in message
        assert "parameter `backbone.2.bias` on rank(s) [1]" in message


@pytest.mark.ddp
@pytest.mark.parametrize("name", ["value", "length"])
def test_diverging_cl_state_is_named(ranks: list[dict[str, Any]], name: str) -> None:
    for r in range(2):
        assert "1 of 5 entries differ from rank 0's: CL state `RankState/counts` on rank(s) [1]" in ranks[r][name]


@pytest.mark.ddp
def test_cl_state_with_other_entries_is_refused(ranks: list[dict[str, Any]]) -> None:
    for r in range(2):
        message = ranks[r]["keys"]
        assert "rank(s) [1] hold other parameters or CL state than rank 0 (entries: [5, 6] by rank)" in message


@pytest.mark.ddp
def test_a_batch_sampler_lightning_cannot_shard_is_refused(ranks: list[dict[str, Any]]) -> None:
    # Lightning refuses it itself, before any hook: it cannot put a DistributedSampler inside
    assert ranks[0]["sampler_lightning"].startswith("TypeError:")
    assert "batch sampler" in ranks[0]["sampler_lightning"]
    # with use_distributed_sampler=False every rank would train on the same batches: refused too
    for r in range(2):
        message = ranks[r]["sampler_unsharded"]
        assert message.startswith("ValueError: `UserBatches.train_dataloader`:")
        assert "Batches" in message and "not split across the 2 processes" in message
    # a batch sampler that shards itself (num_replicas, rank) is accepted, and the ranks agree
    assert ranks[0]["sampler_sharded"] == ranks[1]["sampler_sharded"] == ""
