"""Two processes with strategy="ddp" (gloo, CPU): the stream runs, ranks agree, every test sample counts once.

Ranks are started with torch.multiprocessing.spawn and the usual environment variables, so that
Lightning joins them instead of re-running the pytest command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_cl import ContinualModule, fit_stream
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer, run_two_processes


def odd_stream():
    # 2 experiences of 3 classes x 21 samples = 63 test samples each: a padding sampler would count 64
    return make_tensor_stream(num_experiences=2, per_class=21, num_classes=6)


def _worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2)
    result = fit_stream(trainer, model, odd_stream())
    torch.save(
        {
            "R": result.accuracy_matrix,
            "initial": result.initial_accuracy,
            "state": model.state_dict(),
            "steps": trainer.global_step,
        },
        Path(out) / f"rank{rank}.pt",
    )


@pytest.mark.ddp
def test_two_processes(tmp_path: Path) -> None:
    run_two_processes(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(ranks[0]["R"], ranks[1]["R"], rtol=0, atol=0)
    for k, v in ranks[0]["state"].items():
        torch.testing.assert_close(v, ranks[1]["state"][k], rtol=0, atol=0)
    # 63 samples per experience, 32 per rank, batch 16: 2 steps per epoch, 2 epochs, 2 experiences
    assert ranks[0]["steps"] == 8
    # the same final weights evaluated in one process give exactly the last row: no sample counted twice
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    model.load_state_dict(ranks[0]["state"])
    dm = odd_stream()
    dm._next = dm.num_experiences  # evaluation after the last experience: row T-1
    trainer = quiet_trainer()
    trainer.test(model, datamodule=dm, verbose=False)
    torch.testing.assert_close(model.accuracy_matrix[-1], ranks[0]["R"][-1], rtol=0, atol=0)
