"""PNN: columns per task, lateral connections, frozen earlier columns (no forgetting), checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from lightning_cl import ContinualModule, Experience, StreamResult, fit_stream
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.models.pnn import PNN
from tests.conftest import TinyClassifier, quiet_trainer
from tests.models.dynamic_helpers import checkpointing_trainer, conflicting_task_stream, task_stream, whole


def experience(index: int, classes: tuple[int, ...], task: int) -> Experience:
    return Experience(index, [0], classes_in_this_experience=classes, task_label=task)


def adapted(num_tasks: int, adapter: str = "mlp", num_layers: int = 2) -> PNN:
    pnn = PNN(num_layers=num_layers, in_features=3, hidden_features_per_column=4, adapter=adapter)
    for t in range(num_tasks):
        pnn.adaptation(experience(t, (0, 1, 2), task=t))
    return pnn


class PNNUser(L.LightningModule):
    def __init__(self, lr: float = 0.1, adapter: str = "mlp") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.pnn = PNN(num_layers=2, in_features=8, hidden_features_per_column=16, adapter=adapter)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        return self.pnn(x, task_labels)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, t = batch
        return F.cross_entropy(self(x, t), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def reference(pnn: PNN, x: torch.Tensor, task: int) -> torch.Tensor:
    """The paper's equations written out with the parameters, column by column."""
    p = dict(pnn.named_parameters())

    def adapter(k: int, i: int, previous: list[torch.Tensor]) -> torch.Tensor:
        name = f"columns.{k}.laterals.{i}"
        if pnn.adapter == "linear":
            return sum(prev @ p[f"{name}.lateral.{j}.weight"].T for j, prev in enumerate(previous))  # type: ignore[return-value]
        alpha = p[f"{name}.alpha"]
        hidden = torch.relu((alpha * torch.cat(previous, 1)) @ p[f"{name}.V.weight"].T + p[f"{name}.V.bias"])
        return hidden @ p[f"{name}.U.weight"].T

    acts: list[list[torch.Tensor]] = []  # acts[k][i]: output of layer i of column k
    for k in range(task + 1):
        h, column = x, []
        for i in range(pnn.num_layers):
            z = h @ p[f"columns.{k}.layers.{i}.weight"].T + p[f"columns.{k}.layers.{i}.bias"]
            if i > 0 and k > 0:
                z = z + adapter(k, i - 1, [acts[j][i - 1] for j in range(k)])
            h = torch.relu(z)
            column.append(h)
        acts.append(column)
    last = [column[-1] for column in acts]
    z = last[task] if task == 0 else last[task] + adapter(task, pnn.num_layers - 1, last[:task])
    return z @ p[f"columns.{task}.head.classifier.weight"].T + p[f"columns.{task}.head.classifier.bias"]


@pytest.mark.parametrize("adapter", ["mlp", "linear"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_forward_against_the_papers_equations(adapter: str, num_layers: int) -> None:
    pnn = adapted(3, adapter, num_layers)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    for task in range(3):
        torch.testing.assert_close(pnn(x, task), reference(pnn, x, task))
    tasks = torch.tensor([2, 0, 1, 2, 0])
    mixed = pnn(x, tasks)
    for i, t in enumerate(tasks.tolist()):
        torch.testing.assert_close(mixed[i], reference(pnn, x[i : i + 1], t)[0])


def test_one_column_per_task_and_only_the_current_one_trains() -> None:
    pnn = adapted(3)
    assert pnn.num_columns == 3 and pnn.tasks == [0, 1, 2] and pnn.column_tasks.tolist() == [0, 1, 2]
    trainable = {name.split(".")[1] for name, p in pnn.named_parameters() if p.requires_grad}
    assert trainable == {"2"}  # the new column, its lateral adapters and its head
    assert len(pnn.columns[2].laterals) == 2 and len(pnn.columns[0].laterals) == 0
    pnn.adaptation(experience(3, (0, 1), task=1))  # task 1 again: its column trains, no new column
    assert pnn.num_columns == 3
    assert {name.split(".")[1] for name, p in pnn.named_parameters() if p.requires_grad} == {"1"}
    pnn.eval_adaptation(experience(4, (0, 1, 2, 3), task=7))  # a test task never trained: a frozen column
    assert pnn.tasks == [0, 1, 2, 7] and not any(p.requires_grad for p in pnn.columns[3].parameters())
    assert not pnn.columns[3].head.active_units.any()


def test_lateral_connections_feed_earlier_columns_into_the_new_one() -> None:
    pnn = adapted(2, num_layers=2)
    x = torch.randn(4, 3)
    before = [pnn(x, t).detach() for t in range(2)]
    with torch.no_grad():
        pnn.columns[1].layers[0].weight.add_(1.0)  # change the new column: the old task cannot see it
    assert torch.equal(pnn(x, 0), before[0])
    after_new = pnn(x, 1).detach()
    with torch.no_grad():
        pnn.columns[0].layers[0].weight.mul_(-2.0)  # change the old column: the new task sees it laterally
    assert not torch.allclose(pnn(x, 1), after_new)
    with torch.no_grad():
        for adapter in pnn.columns[1].laterals:
            adapter.U.weight.zero_()  # type: ignore[union-attr,operator]
    column_alone = pnn(x, 1).detach()
    with torch.no_grad():
        pnn.columns[0].layers[0].weight.mul_(3.0)
    assert torch.equal(pnn(x, 1), column_alone)  # without laterals the columns are independent


def test_columns_are_built_from_the_seed_not_the_global_rng() -> None:
    states = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        states.append(adapted(2).state_dict())
    for key, value in states[0].items():
        assert torch.equal(states[1][key], value), key
    other = PNN(2, 3, 4, seed=5)
    other.adaptation(experience(0, (0, 1, 2), task=0))
    assert not torch.equal(other.state_dict()["columns.0.layers.0.weight"], states[0]["columns.0.layers.0.weight"])


class Logits(ContinualCallback):
    """The logits of task 0's training samples after every experience."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.seen: list[torch.Tensor] = []

    def on_experience_end(self, trainer: L.Trainer, pl_module: Any, experience: Experience) -> None:
        with torch.no_grad():
            self.seen.append(pl_module.module(self.x, torch.zeros(len(self.x), dtype=torch.long)).clone())


def test_cannot_forget_on_a_task_incremental_stream() -> None:
    dm = conflicting_task_stream()
    x, _, _ = whole(dm.train_stream[0].dataset)
    spy = Logits(x)
    torch.manual_seed(0)
    model = ContinualModule(PNNUser())
    result = fit_stream(quiet_trainer(max_epochs=3, callbacks=[spy]), model, dm)
    R = result.accuracy_matrix
    assert float(R.diagonal().min()) > 0.9
    assert torch.equal(spy.seen[2], spy.seen[0])  # task 0 computes exactly what it did after training it
    assert R[1, 0] == R[0, 0] == R[2, 0] and result.forgetting == 0.0
    torch.manual_seed(0)  # naive fine-tuning of one shared network on the same stream forgets
    naive = fit_stream(
        quiet_trainer(max_epochs=3),
        ContinualModule(TinyClassifier(in_features=8, num_classes=2)),
        conflicting_task_stream(),
    )
    assert float(naive.accuracy_matrix.diagonal().min()) > 0.9 and naive.forgetting > 0.4


def test_state_dict_round_trip_adds_the_columns_and_their_freezing() -> None:
    pnn = adapted(3)
    pnn.adaptation(experience(3, (0, 1, 2, 3), task=1))  # grow task 1's head, train column 1 again
    fresh = PNN(num_layers=2, in_features=3, hidden_features_per_column=4, seed=9)
    fresh.load_state_dict(pnn.state_dict())
    assert fresh.tasks == [0, 1, 2]
    for key, value in pnn.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert [p.requires_grad for p in fresh.parameters()] == [p.requires_grad for p in pnn.parameters()]
    x, tasks = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    assert torch.equal(fresh(x, tasks), pnn(x, tasks))
    other = PNN(num_layers=2, in_features=3, hidden_features_per_column=4)
    other.adaptation(experience(0, (0, 1), task=5))
    with pytest.raises(RuntimeError, match=r"the checkpoint's columns are for tasks \[0, 1, 2\], this PNN's for \[5\]"):
        other.load_state_dict(pnn.state_dict())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamResult, dict[str, torch.Tensor], Path]:
    path = tmp_path_factory.mktemp("ckpts")
    model = ContinualModule(PNNUser(lr=0.05))
    result = fit_stream(checkpointing_trainer(path), model, task_stream())
    return result, {k: v.clone() for k, v in model.state_dict().items()}, path


# epochs 0-1 train task 0, 2-3 task 1, 4-5 task 2
def test_resume_mid_experience_gives_the_uninterrupted_result(uninterrupted: Any, tmp_path: Path) -> None:
    expected, state, path = uninterrupted
    checkpoint = torch.load(path / "epoch=2.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["pnn.column_tasks"].tolist() == [0, 1, 2]
    model = ContinualModule(PNNUser(lr=0.05))  # no column: all come from the checkpoint, task 0's frozen
    result = fit_stream(checkpointing_trainer(tmp_path), model, task_stream(), ckpt_path=path / "epoch=2.ckpt")
    torch.testing.assert_close(result.accuracy_matrix, expected.accuracy_matrix)
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_layers": 0}, ValueError, r"`num_layers`: expected a positive integer, got 0"),
        ({"in_features": "784"}, ValueError, r"`in_features`: expected a positive integer, got '784'"),
        ({"hidden_features_per_column": -1}, ValueError, r"`hidden_features_per_column`: expected a positive"),
        ({"adapter": "conv"}, ValueError, r"`adapter`: expected one of \['mlp', 'linear'\], got 'conv'"),
        ({"seed": "0"}, TypeError, r"`seed`: expected an int, got str"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PNN(**kwargs)


def test_bad_inputs() -> None:
    pnn = adapted(2)
    with pytest.raises(ValueError, match=r"`task_labels`: PNN has no column for task 3; known tasks: \[0, 1\]"):
        pnn(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"`x`: expected 3 features per sample \(in_features\), got 4"):
        pnn(torch.zeros(2, 4), 0)
