"""ContinualMetrics on two processes: the confusion and flip counts equal those of one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_cl import ContinualModule
from lightning_cl.metrics import ContinualMetrics
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer, run_two_processes

METRICS = ["confusion_matrix", "class_accuracy", "flip_rates", "stream_loss", "stream_accuracy", "epoch_accuracy"]


def odd_stream():
    # 2 experiences of 3 classes x 21 samples = 63 test samples each: ranks get 32 and 31
    return make_tensor_stream(num_experiences=2, per_class=21, num_classes=6)


def _worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    callback = ContinualMetrics(METRICS)
    trainer = quiet_trainer(devices=2, strategy="ddp", callbacks=[callback])
    dm = odd_stream()
    states = []
    trainer.test(model, datamodule=dm, verbose=False)
    states.append({k: v.clone() for k, v in model.state_dict().items()})
    for _ in range(dm.num_experiences):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    torch.save(
        {"results": callback.results, "states": states, "state_dict": callback.state_dict()},
        Path(out) / f"rank{rank}.pt",
    )


@pytest.mark.ddp
def test_two_processes_count_like_one(tmp_path: Path) -> None:
    run_two_processes(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ddp = ranks[0]["results"]
    assert [r["row"] for r in ddp] == [-1, 0, 1]
    for a, b in zip(ddp, ranks[1]["results"]):  # every rank has the synced values
        assert torch.equal(a["confusion_matrix"], b["confusion_matrix"])
        assert a["stream/loss"] == b["stream/loss"]

    # the same weights, evaluated one after the other in a single process
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    callback = ContinualMetrics(METRICS)
    trainer, dm = quiet_trainer(callbacks=[callback]), odd_stream()
    for k, state in enumerate(ranks[0]["states"]):
        model.load_state_dict(state)
        dm._next = k  # the evaluation after experience k - 1
        trainer.test(model, datamodule=dm, verbose=False)
    single = callback.results
    for a, b in zip(ddp, single):
        assert int(a["confusion_matrix"].sum()) == 2 * 63  # every test sample counted once
        assert torch.equal(a["confusion_matrix"], b["confusion_matrix"])
        assert a["stream/accuracy"] == b["stream/accuracy"]
        assert a["test/acc_class3"] == b["test/acc_class3"]
        assert a["stream/loss"] == pytest.approx(b["stream/loss"], rel=1e-6)
    for a, b in zip(ddp[1:], single[1:]):
        assert torch.equal(a["flip_counts"], b["flip_counts"])
        assert a["flip_counts"][2].tolist() == [63, 63]
        assert a["stream/negative_flip_rate"] == b["stream/negative_flip_rate"]
    assert int(ddp[-1]["flip_counts"][:2].sum()) > 0  # flips happened: a wrong pairing would show

    # the checkpoint rank 0 writes holds both shards: interleaved, they are the single-process reference
    flips = ranks[0]["state_dict"]["flips"]
    assert flips["world_size"] == 2
    reference = callback.state_dict()["flips"]["shards"][0].split(63)
    for j in range(2):
        shards = [flips["shards"][r].split(flips["lengths"][r].tolist())[j] for r in range(2)]
        assert [len(s) for s in shards] == [32, 31]
        assert torch.equal(shards[0], reference[j][0::2]) and torch.equal(shards[1], reference[j][1::2])
