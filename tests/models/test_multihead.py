"""MultiHeadClassifier: routing by task label, heads per task, freezing, checkpoints, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, Experience, StreamResult, fit_stream
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.models.multihead import MultiHeadClassifier
from lightning_cl.models.pnn import PNN
from tests.callbacks.regularization_helpers import assert_ranks_agree, two_process_results
from tests.conftest import quiet_trainer
from tests.models.dynamic_helpers import checkpointing_trainer, task_stream


def experience(index: int, classes: tuple[int, ...], task: int) -> Experience:
    return Experience(index, [0], classes_in_this_experience=classes, task_label=task)


class MultiHeadUser(L.LightningModule):
    """A user's task-incremental module: a shared trunk and one head per task."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.heads = MultiHeadClassifier(16)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x), task_labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, t = batch
        return F.cross_entropy(self(x, t), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def two_heads() -> MultiHeadClassifier:
    heads = MultiHeadClassifier(2, mask_value=-9.0)
    heads.adaptation(experience(0, (0, 1), task=0))
    heads.adaptation(experience(1, (0, 1, 2), task=1))
    with torch.no_grad():
        heads.heads["0"].classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        heads.heads["0"].classifier.bias.zero_()
        heads.heads["1"].classifier.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]]))
        heads.heads["1"].classifier.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return heads


def test_routing_by_task_label_against_a_hand_computed_reference() -> None:
    heads = two_heads()
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    expected = torch.tensor(
        [
            [1.0, 2.0, -9.0],  # task 0: identity, padded to the widest head with mask_value
            [2.0, 6.0, 2.0],  # task 1: [x0 + x1, 2 x0, 1 - x1]
            [0.5, 0.5, -9.0],
        ]
    )
    assert torch.equal(heads(x, torch.tensor([0, 1, 0])), expected)
    all_task_1 = torch.tensor([[3.0, 2.0, -1.0], [2.0, 6.0, 2.0], [1.0, 1.0, 0.5]])
    assert torch.equal(heads(x, 1), all_task_1)  # an int labels the whole batch
    assert torch.equal(heads(x, torch.tensor(1)), all_task_1)
    assert torch.equal(heads(x[:1], 0), expected[:1, :2])  # one task: that head's own width


def test_a_mixed_batch_gives_each_sample_its_own_heads_output() -> None:
    heads = two_heads()
    x, tasks = torch.randn(7, 2), torch.tensor([1, 0, 0, 1, 1, 0, 1])
    mixed = heads(x, tasks)
    for i in range(7):
        alone = heads(x[i : i + 1], int(tasks[i]))
        assert torch.equal(mixed[i, : alone.shape[1]], alone[0])


def test_heads_per_task_masking_and_freezing() -> None:
    heads = MultiHeadClassifier(4)
    heads.adaptation(experience(0, (0, 1), task=0))
    heads.adaptation(experience(1, (2,), task=1))  # a head of 3 outputs, only unit 2 trained
    assert heads.tasks == [0, 1] and int(heads.current_task) == 1
    assert heads.heads["1"].active_units.tolist() == [False, False, True]
    assert heads(torch.randn(2, 4), 1)[:, :2].eq(-1000.0).all()
    assert [p.requires_grad for p in heads.heads["0"].parameters()] == [False, False]
    assert [p.requires_grad for p in heads.heads["1"].parameters()] == [True, True]
    heads.adaptation(experience(2, (0, 1), task=0))  # back to task 0: it trains, task 1 is frozen
    assert [p.requires_grad for p in heads.heads["0"].parameters()] == [True, True]
    assert [p.requires_grad for p in heads.heads["1"].parameters()] == [False, False]
    heads.eval_adaptation(experience(3, (0, 1, 2, 3), task=2))  # for the test stream: frozen, nothing trained
    assert heads.tasks == [0, 1, 2] and not heads.heads["2"].active_units.any()
    assert not heads.heads["2"].classifier.weight.requires_grad


def test_unknown_task_and_bad_task_labels() -> None:
    heads = two_heads()
    with pytest.raises(
        ValueError, match=r"`task_labels`: MultiHeadClassifier has no head for task 5; known tasks: \[0, 1\]"
    ):
        heads(torch.zeros(2, 2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"no head for task 0; known tasks: \[\]"):
        MultiHeadClassifier(2)(torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match=r"expected one task label per sample \(2\), got shape \(3,\)"):
        heads(torch.zeros(2, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match=r"`task_labels`: expected a tensor \[B\] or an int, got str"):
        heads(torch.zeros(2, 2), "0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_features": -2}, ValueError, r"`in_features`: expected a positive integer, got -2"),
        ({"initial_out_features": 0}, ValueError, r"`initial_out_features`: expected a positive integer, got 0"),
        ({"masking": "yes"}, TypeError, r"`masking`: expected a bool, got str"),
        ({"seed": None}, TypeError, r"`seed`: expected an int, got NoneType"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    arguments: dict[str, Any] = {"in_features": 4, **kwargs}
    with pytest.raises(error, match=match):
        MultiHeadClassifier(**arguments)


def test_state_dict_round_trip_creates_the_missing_heads_and_their_freezing() -> None:
    heads = two_heads()
    heads.eval_adaptation(experience(2, (0, 1, 2, 3), task=4))
    fresh = MultiHeadClassifier(2, mask_value=-9.0)
    fresh.load_state_dict(heads.state_dict())
    assert fresh.tasks == [0, 1, 4]
    for key, value in heads.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert [p.requires_grad for p in fresh.parameters()] == [p.requires_grad for p in heads.parameters()]
    x, tasks = torch.randn(5, 2), torch.tensor([0, 4, 1, 1, 0])
    assert torch.equal(fresh(x, tasks), heads(x, tasks))


class FrozenSpy(ContinualCallback):
    """Records, at each experience, which heads the optimizer may change and what the others hold."""

    def __init__(self) -> None:
        self.trainable: list[list[int]] = []
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def _snapshot(self, pl_module: Any) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in pl_module.module.heads.state_dict().items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        heads = pl_module.module.heads
        self.trainable.append([t for t in heads.tasks if heads.heads[str(t)].classifier.weight.requires_grad])
        self.before.append(self._snapshot(pl_module))

    def on_experience_end(self, trainer: L.Trainer, pl_module: Any, experience: Experience) -> None:
        self.after.append(self._snapshot(pl_module))


def test_task_incremental_stream_trains_one_head_per_task() -> None:
    torch.manual_seed(0)
    spy = FrozenSpy()
    model = ContinualModule(MultiHeadUser())
    result = fit_stream(quiet_trainer(max_epochs=3, callbacks=[spy]), model, task_stream())
    assert model.module.heads.tasks == [0, 1, 2]
    assert spy.trainable == [[0], [1], [2]]
    for k in range(3):
        for key, value in spy.before[k].items():
            if key.startswith("heads.") and not key.startswith(f"heads.{k}."):
                assert torch.equal(spy.after[k][key], value), key  # other tasks' heads do not move
            elif key.startswith(f"heads.{k}.classifier"):
                assert not torch.equal(spy.after[k][key], value), key  # the current one learns
    R = result.accuracy_matrix
    assert float(R.diagonal().min()) > 0.9  # each task is learned by its own head on the shared trunk


def run_model(seed: int = 0) -> ContinualModule:
    torch.manual_seed(seed)
    return ContinualModule(MultiHeadUser(lr=0.05))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamResult, dict[str, torch.Tensor], Path]:
    path = tmp_path_factory.mktemp("ckpts")
    model = run_model()
    result = fit_stream(checkpointing_trainer(path), model, task_stream())
    return result, {k: v.clone() for k, v in model.state_dict().items()}, path


# epochs 0-1 train task 0, 2-3 task 1, 4-5 task 2
@pytest.mark.parametrize("name", ["epoch=1", "epoch=2"], ids=["end-of-task-0", "mid-task-1"])
def test_resume_creates_the_heads_and_gives_the_uninterrupted_result(
    uninterrupted: Any, name: str, tmp_path: Path
) -> None:
    expected, state, path = uninterrupted
    model = run_model(seed=123)  # no head at all: every head comes from the checkpoint
    result = fit_stream(checkpointing_trainer(tmp_path), model, task_stream(), ckpt_path=path / f"{name}.ckpt")
    torch.testing.assert_close(result.accuracy_matrix, expected.accuracy_matrix)
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_checkpoint_loads_with_torch_load_weights_only(tmp_path: Path) -> None:
    model = run_model()
    trainer = quiet_trainer(callbacks=[])
    dm = task_stream()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.save_checkpoint(tmp_path / "heads.ckpt")
    state = torch.load(tmp_path / "heads.ckpt", weights_only=True)["state_dict"]
    assert {k for k in state if k.startswith("heads.heads.")} == {
        f"heads.heads.{t}.{name}" for t in range(3) for name in ("classifier.weight", "classifier.bias", "active_units")
    }
    assert int(state["heads.current_task"]) == 0
    bare = MultiHeadUser.load_from_checkpoint(tmp_path / "heads.ckpt")
    assert bare.heads.tasks == [0, 1, 2]


class HeadsAndColumns(MultiHeadUser):
    """Both kinds of per-task modules in one model: a multi-head trunk plus a PNN, logits summed."""

    def __init__(self) -> None:
        super().__init__()
        self.pnn = PNN(num_layers=2, in_features=8, hidden_features_per_column=8)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        return super().forward(x, task_labels) + self.pnn(x, task_labels)


def _ddp_worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    model = ContinualModule(HeadsAndColumns())
    # strategy "ddp" leaves find_unused_parameters False: a trainable head or column without a
    # gradient (an old task's) would stop the second step with an error
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=1, callbacks=[])
    result = fit_stream(trainer, model, task_stream(num_experiences=3, num_classes=6))
    torch.save({"R": result.accuracy_matrix, "state": model.state_dict()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.ddp
def test_two_processes_train_without_find_unused_parameters(tmp_path: Path) -> None:
    ranks = two_process_results(_ddp_worker, tmp_path)
    torch.testing.assert_close(ranks[0]["R"], ranks[1]["R"], rtol=0, atol=0)
    assert_ranks_agree(ranks, ["state"])
    assert float(ranks[0]["R"].diagonal().min()) > 0.9
