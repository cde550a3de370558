"""online on two processes: each step is a run of consecutive samples, mini-experiences stay whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor

from lightning_cl import ContinualModule
from lightning_cl.benchmarks import from_tensors
from lightning_cl.benchmarks.online import online
from lightning_cl.core.experience import Experience
from tests.conftest import TinyClassifier, quiet_trainer, run_two_processes

SIZES = (32, 24)


def stream() -> Any:
    y = torch.cat([torch.arange(2).repeat(SIZES[0] // 2), torch.arange(2, 4).repeat(SIZES[1] // 2)])
    x = torch.cat([torch.arange(len(y)).float()[:, None], torch.randn(len(y), 7, generator=torch.Generator())], 1)
    return online(from_tensors(x, y, x, y, num_experiences=2, class_order=range(4)), 8, batch_size=4)


class Recorder(TinyClassifier):
    def __init__(self) -> None:
        super().__init__(in_features=8, num_classes=4)
        self.batches: list[list[int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        dm = self.trainer.datamodule
        self.batches.append([dm.current_experience, dm.current_mini_experience, *batch[0][:, 0].long().tolist()])
        return super().training_step(batch, batch_idx)


class Events(L.Callback):
    def __init__(self) -> None:
        self.events: list[list[int]] = []

    def on_mini_experience_start(self, trainer: L.Trainer, pl_module: Any, mini: Experience) -> None:
        self.events.append([trainer.datamodule.current_experience, mini.index])  # type: ignore[attr-defined]


def _worker(rank: int, out: str) -> None:
    user, events = Recorder(), Events()
    trainer = quiet_trainer(devices=2, strategy="ddp", callbacks=[events])
    dm = stream()
    model = ContinualModule(user)
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    torch.save(
        {"batches": user.batches, "events": events.events, "steps": trainer.global_step}, Path(out) / f"{rank}.pt"
    )


@pytest.mark.ddp
def test_mini_experiences_are_whole_across_processes(tmp_path: Path) -> None:
    run_two_processes(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    # batch 4 on each of 2 processes: one step is 8 consecutive samples, i.e. one mini-experience
    assert [r["steps"] for r in ranks] == [sum(SIZES) // 8] * 2
    expected_events = [[k, m] for k, n in enumerate(SIZES) for m in range(n // 8)]
    assert ranks[0]["events"] == ranks[1]["events"] == expected_events
    dm = stream()
    for a, b in zip(ranks[0]["batches"], ranks[1]["batches"]):
        k, m = a[:2]
        assert b[:2] == [k, m]
        assert sorted(a[2:] + b[2:]) == dm.mini_experiences(k)[m].dataset.indices.tolist()  # type: ignore[attr-defined]
