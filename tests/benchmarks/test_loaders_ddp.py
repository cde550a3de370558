"""A balanced training loader on two processes: Lightning keeps the sampler, every step is balanced."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_cl import ContinualModule
from tests.benchmarks.test_loaders import N, Recorder, stream
from tests.conftest import quiet_trainer, run_two_processes


def _worker(rank: int, out: str) -> None:
    user = Recorder()
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2)
    trainer.fit(ContinualModule(user), datamodule=stream(balance="class", batch_size=3))
    torch.save({"labels": user.labels, "rows": user.rows}, Path(out) / f"{rank}.pt")


@pytest.mark.ddp
def test_every_step_across_processes_is_balanced(tmp_path: Path) -> None:
    run_two_processes(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    assert [len(r["labels"]) for r in ranks] == [2 * N // 6] * 2  # 2 epochs of 48 samples, 6 per step
    for a, b in zip(ranks[0]["labels"], ranks[1]["labels"]):
        assert sorted(Counter(a + b).values()) == [2, 2, 2]  # batch 3 on 2 ranks: two of each class
    first_epoch = [r["rows"][: N // 6] for r in ranks]
    second_epoch = [r["rows"][N // 6 :] for r in ranks]
    assert first_epoch != second_epoch  # the epoch reaches the sampler on every rank
    seen = [row for r in first_epoch for batch in r for row in batch]
    assert len(seen) == N and len(set(seen)) < N  # 32 / 8 / 8 samples drawn 16 / 16 / 16
