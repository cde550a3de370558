"""LwF: the distillation term against explicit softmax/KL, its restriction to earlier outputs, multi-head
distillation, forgetting against naive on a task-incremental stream, checkpoints, DDP and bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import task_incremental
from lightning_cl.callbacks.lwf import LwF
from lightning_cl.core.callback import TrainingStep
from lightning_cl.core.data import InMemoryDataset
from tests.callbacks.regularization_helpers import assert_ranks_agree, two_process_results
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


class MultiHead(L.LightningModule):
    """A user's task-incremental model: a shared trunk and one 2-way head per task."""

    def __init__(self, in_features: int = 8, hidden: int = 4, num_tasks: int = 3, lr: float = 0.3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(num_tasks))
        self.lr = lr

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        every_head = torch.stack([head(h) for head in self.heads], dim=1)  # [B, tasks, 2]
        return every_head[torch.arange(len(x)), task_labels]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, t = batch
        return F.cross_entropy(self(x, t), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def task_stream(num_tasks: int = 3, per_task: int = 120, seed: int = 0) -> Any:
    """Tasks over the same inputs x ~ N(0, I): task t labels x by the sign of x . w_t.

    The tasks compete for a narrow shared trunk, so fine-tuning on task t overwrites the
    features of the earlier tasks.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_tasks, 8, generator=g)

    def split() -> InMemoryDataset:
        x = torch.randn(num_tasks, per_task, 8, generator=g)
        y = 2 * torch.arange(num_tasks)[:, None] + (torch.einsum("tnd,td->tn", x, w) > 0).long()
        return InMemoryDataset(x.reshape(-1, 8), y.reshape(-1))

    train, test = split(), split()
    return task_incremental(train, test, num_experiences=num_tasks, class_order=range(2 * num_tasks), batch_size=16)


def explicit_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), batch mean, written out."""
    q = torch.exp(teacher_logits / T)
    q = q / q.sum(dim=1, keepdim=True)
    log_p = student_logits / T - torch.log(torch.exp(student_logits / T).sum(dim=1, keepdim=True))
    return (q * (torch.log(q) - log_p)).sum() / len(teacher_logits)


def started(callback: LwF, model: L.LightningModule, dm: Any, index: int) -> SimpleNamespace:
    """`callback` as it is when experience `index` starts (the hook needs the model and the stream only)."""
    pl_module = SimpleNamespace(module=model, datamodule=dm)
    callback.on_experience_start(None, pl_module, dm.train_stream[index])  # type: ignore[arg-type]
    return pl_module


def step_of(model: nn.Module, batch: Any, logits: torch.Tensor | None = None) -> TrainingStep:
    output = {"loss": torch.tensor(0.0), "logits": logits if logits is not None else model(batch[0])}
    return TrainingStep(SimpleNamespace(module=model), batch, {}, output, output["loss"], 0)  # type: ignore[arg-type]


def perturb(module: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


# ------------------------------------------------------------------------------------------ math
@pytest.mark.parametrize(("alpha", "T"), [(1.0, 2.0), (0.5, 1.0), (3.0, 4.0)])
def test_term_is_alpha_times_kl_on_previous_classes(alpha: float, T: float) -> None:
    torch.manual_seed(0)
    dm = make_tensor_stream(num_experiences=3, num_classes=6)  # classes {0,1}, {2,3}, {4,5}
    model = TinyClassifier(in_features=8, num_classes=6)
    callback = LwF(alpha=alpha, temperature=T)
    started(callback, model, dm, 2)
    teacher = [p.clone() for p in model.parameters()]
    perturb(model)
    x, y = torch.randn(5, 8), torch.tensor([4, 5, 4, 5, 4])
    term = callback.loss_terms(step_of(model, (x, y)))["lwf"]

    # the teacher's logits, from the weights at the experience start, by hand
    w1, b1, w2, b2 = teacher
    old = torch.relu(x @ w1.T + b1) @ w2.T + b2
    new = model(x)
    expected = alpha * explicit_kl(old[:, :4], new[:, :4], T)  # classes 0-3: experiences 0 and 1
    torch.testing.assert_close(term, expected)
    assert term.requires_grad  # it trains the student


def test_no_term_in_the_first_experience_and_with_zero_alpha() -> None:
    dm = make_tensor_stream(num_experiences=3, num_classes=6)
    model = TinyClassifier(in_features=8, num_classes=6)
    batch = (torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
    first = LwF()
    started(first, model, dm, 0)
    assert first.loss_terms(step_of(model, batch)) == {}
    per_experience = LwF(alpha=[0.0, 0.0, 2.0])
    started(per_experience, model, dm, 1)
    assert per_experience.loss_terms(step_of(model, batch)) == {}
    started(per_experience, model, dm, 2)
    perturb(model)
    assert float(per_experience.loss_terms(step_of(model, batch))["lwf"]) > 0


def test_only_the_outputs_of_earlier_experiences_are_distilled() -> None:
    torch.manual_seed(0)
    dm = make_tensor_stream(num_experiences=3, num_classes=6)
    model = TinyClassifier(in_features=8, num_classes=6)
    callback = LwF()
    started(callback, model, dm, 1)  # earlier classes: 0 and 1
    perturb(model)
    x, y = torch.randn(6, 8), torch.full((6,), 2)
    logits = model(x).detach()
    term = callback.loss_terms(step_of(model, (x, y), logits))["lwf"]
    new_classes = logits.clone()
    new_classes[:, 2:] += torch.randn(6, 4) * 5  # classes of this and later experiences
    unchanged = callback.loss_terms(step_of(model, (x, y), new_classes))["lwf"]
    torch.testing.assert_close(unchanged, term, rtol=0, atol=0)
    old_class = logits.clone()
    old_class[:, 1] += 1.0
    assert not torch.allclose(callback.loss_terms(step_of(model, (x, y), old_class))["lwf"], term)


def test_class_order_selects_the_columns_of_the_earlier_classes() -> None:
    torch.manual_seed(0)
    dm = make_tensor_stream(num_experiences=3, num_classes=6, class_order=[4, 1, 0, 5, 3, 2])
    assert dm.train_stream.previous_classes(1) == (1, 4)
    model = TinyClassifier(in_features=8, num_classes=6)
    callback = LwF(temperature=1.0)
    started(callback, model, dm, 1)
    old = model(x := torch.randn(5, 8)).detach()
    perturb(model)
    term = callback.loss_terms(step_of(model, (x, torch.zeros(5, dtype=torch.long))))["lwf"]
    torch.testing.assert_close(term, explicit_kl(old[:, [1, 4]], model(x)[:, [1, 4]], 1.0))


def test_every_earlier_head_is_distilled_with_its_task_label() -> None:
    torch.manual_seed(0)
    dm = task_stream(num_tasks=3)
    model = MultiHead(hidden=6)
    callback = LwF(alpha=0.7, temperature=2.0)
    started(callback, model, dm, 2)
    teacher = MultiHead(hidden=6)
    teacher.load_state_dict(model.state_dict())
    perturb(model)
    x, y, t = (torch.stack(v) for v in zip(*[dm.train_stream[2].dataset[i] for i in range(8)]))
    assert set(t.tolist()) == {2}
    batch = (x, y, t)
    term = callback.loss_terms(step_of(model, batch, model(x, t)))["lwf"]

    expected = sum(
        explicit_kl(teacher(x, torch.full_like(t, tau)), model(x, torch.full_like(t, tau)), 2.0) for tau in (0, 1)
    )
    torch.testing.assert_close(term, 0.7 * expected)

    def term_after(change: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            change.weight[0].add_(1.0)  # one class only: shifting both would leave a softmax as it is
        value = callback.loss_terms(step_of(model, batch, model(x, t)))["lwf"]
        with torch.no_grad():
            change.weight[0].sub_(1.0)
        return value

    # heads 0 and 1 are each in the term; the current task's head is not
    assert not torch.allclose(term_after(model.heads[0]), term)
    assert not torch.allclose(term_after(model.heads[1]), term)
    torch.testing.assert_close(term_after(model.heads[2]), term)


def test_gradient_reaches_the_old_heads_and_the_trunk() -> None:
    torch.manual_seed(0)
    dm = task_stream(num_tasks=2)
    model = MultiHead(hidden=6, num_tasks=2)
    callback = LwF()
    started(callback, model, dm, 1)
    perturb(model)
    x = torch.randn(4, 8)
    t = torch.ones(4, dtype=torch.long)
    callback.loss_terms(step_of(model, (x, torch.zeros(4, dtype=torch.long), t), model(x, t)))["lwf"].backward()
    assert model.heads[0].weight.grad is not None and model.heads[0].weight.grad.abs().sum() > 0
    assert model.trunk[0].weight.grad is not None and model.trunk[0].weight.grad.abs().sum() > 0
    grad = model.heads[1].weight.grad  # the current head only sees the task loss
    assert grad is None or torch.count_nonzero(grad) == 0


# ------------------------------------------------------------------------------------ training
def til_run(callbacks: list[Any]) -> Any:
    torch.manual_seed(0)
    model = ContinualModule(MultiHead(hidden=4, lr=0.3))
    return fit_stream(quiet_trainer(max_epochs=20, callbacks=callbacks), model, task_stream(), evaluate_initial=False)


def test_lwf_forgets_less_than_naive_on_task_incremental() -> None:
    naive, lwf = til_run([]), til_run([LwF(alpha=1.0, temperature=2.0)])
    for result in (naive, lwf):
        assert float(result.accuracy_matrix.diagonal().min()) > 0.85  # every task is learned
    # accuracy on task 0 after the last task (naive 0.76, LwF 0.85 when written)
    assert float(lwf.accuracy_matrix[-1, 0]) > float(naive.accuracy_matrix[-1, 0]) + 0.05
    # the earlier tasks on average (naive 0.74, LwF 0.92)
    assert float(lwf.accuracy_matrix[-1, :2].mean()) > float(naive.accuracy_matrix[-1, :2].mean()) + 0.1
    assert lwf.forgetting < naive.forgetting


def test_term_is_logged_from_the_second_experience() -> None:
    dm = make_tensor_stream(num_experiences=2, num_classes=4)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=4))
    trainer = quiet_trainer(callbacks=[LwF()])
    trainer.fit(model, datamodule=dm)
    assert "train/lwf_loss" not in trainer.callback_metrics
    trainer.fit(model, datamodule=dm)
    assert float(trainer.callback_metrics["train/lwf_loss"]) > 0


# --------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dm = task_stream(num_tasks=2)
    user = MultiHead(hidden=6, num_tasks=2)
    callback = LwF(alpha=[0.0, 0.5])
    trainer, model = quiet_trainer(callbacks=[callback]), ContinualModule(user)
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = callback.state_dict()
    assert set(state) == {"experience", "task_label", "active", "teacher"}
    assert state["active"] == {0: [0, 1]}

    path = tmp_path / "lwf.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"][callback.state_key]
    restored = LwF(alpha=[0.0, 0.5])
    restored.load_state_dict(saved)
    assert restored.state_dict().keys() == state.keys()
    for key in ("experience", "task_label", "active"):
        assert restored.state_dict()[key] == state[key]
    for name, value in state["teacher"].items():
        torch.testing.assert_close(restored.state_dict()["teacher"][name], value, rtol=0, atol=0)

    # the restored teacher (rebuilt from a copy of the model at first use) gives the same term
    x = torch.randn(5, 8)
    batch = (x, torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long))
    step = step_of(user, batch, user(x, batch[2]))
    torch.testing.assert_close(restored.loss_terms(step)["lwf"], callback.loss_terms(step)["lwf"])
    for name, value in state["teacher"].items():
        torch.testing.assert_close(restored.state_dict()["teacher"][name], value, rtol=0, atol=0)


def test_two_instances_do_not_collide() -> None:
    assert LwF(alpha=1.0).state_key != LwF(alpha=2.0).state_key


def checkpointing_trainer(path: Path) -> L.Trainer:
    saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saver, LwF()])


def test_run_resumed_mid_experience_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    full = fit_stream(checkpointing_trainer(tmp_path / "full"), model, make_tensor_stream(3), evaluate_initial=False)
    # epochs 0-1 train experience 0, 2-3 experience 1: "epoch=2" is in the middle of experience 1,
    # where no on_experience_start runs and the teacher comes from the checkpoint alone
    torch.manual_seed(123)
    resumed_model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    resumed = fit_stream(
        checkpointing_trainer(tmp_path / "resumed"),
        resumed_model,
        make_tensor_stream(3),
        ckpt_path=tmp_path / "full" / "epoch=2.ckpt",
        evaluate_initial=False,
    )
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[k], v)


def test_task_loss_weight_scales_the_task_loss_per_experience() -> None:
    dm = make_tensor_stream(num_experiences=3, num_classes=6)
    model = TinyClassifier(in_features=8, num_classes=6)
    batch = (torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
    step = step_of(model, batch)
    step.loss = torch.tensor(2.0)
    callback = LwF(task_loss_weight=[1.0, 0.5, 1 / 3])
    started(callback, model, dm, 0)
    assert callback.task_loss(step) is None  # weight 1: the loss is left alone
    started(callback, model, dm, 2)
    torch.testing.assert_close(callback.task_loss(step), torch.tensor(2.0 / 3))
    assert LwF().task_loss(step) is None


def test_task_loss_weight_reaches_training() -> None:
    # a weight of 0 in experience 1 (and no distillation) leaves nothing to train on: the weights
    # stay as experience 0 left them, while the default weight moves them
    moved = {}
    for weights in ([1.0, 0.0], [1.0, 1.0]):
        torch.manual_seed(0)
        dm = make_tensor_stream(num_experiences=2, num_classes=4)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=4))
        trainer = quiet_trainer(callbacks=[LwF(alpha=0.0, task_loss_weight=weights)], max_epochs=1)
        trainer.fit(model, datamodule=dm)
        before = [p.detach().clone() for p in model.parameters()]
        trainer.fit(model, datamodule=dm)
        moved[weights[1]] = max(float((p - q).abs().max()) for p, q in zip(model.parameters(), before))
    assert moved[0.0] == 0.0
    assert moved[1.0] > 1e-3


def test_task_loss_weight_changes_the_state_key_only_when_set() -> None:
    assert LwF(alpha=1.0).state_key == LwF(alpha=1.0, task_loss_weight=1.0).state_key
    assert LwF(alpha=1.0).state_key != LwF(alpha=1.0, task_loss_weight=0.5).state_key


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": -1.0}, ValueError, r"`alpha`: expected a non-negative finite number, got -1\.0"),
        ({"alpha": [1.0, -0.5]}, ValueError, r"`alpha\[1\]`: expected a non-negative"),
        ({"alpha": []}, ValueError, r"`alpha`: .* got an empty list"),
        ({"alpha": float("nan")}, ValueError, r"`alpha`"),
        ({"alpha": "1"}, TypeError, r"`alpha`: expected a non-negative number or a list of them, got str"),
        ({"alpha": True}, TypeError, r"`alpha`"),
        ({"temperature": 0.0}, ValueError, r"`temperature`: expected a positive finite number, got 0\.0"),
        ({"temperature": -2}, ValueError, r"`temperature`"),
        ({"temperature": float("inf")}, ValueError, r"`temperature`"),
        ({"temperature": None}, TypeError, r"`temperature`: expected a positive number, got NoneType"),
        ({"task_loss_weight": -0.5}, ValueError, r"`task_loss_weight`: expected a non-negative finite number"),
        ({"task_loss_weight": []}, ValueError, r"`task_loss_weight`: .* got an empty list"),
        ({"task_loss_weight": "1/k"}, TypeError, r"`task_loss_weight`: expected a non-negative number"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LwF(**kwargs)


def test_alpha_list_needs_one_value_per_experience() -> None:
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    with pytest.raises(ValueError, match=r"`alpha`: expected one value per experience \(3 for this stream\), got 2"):
        quiet_trainer(callbacks=[LwF(alpha=[1.0, 1.0])]).fit(model, datamodule=make_tensor_stream(3))
    with pytest.raises(ValueError, match=r"`task_loss_weight`: expected one value per experience \(3 for"):
        quiet_trainer(callbacks=[LwF(task_loss_weight=[1.0])]).fit(model, datamodule=make_tensor_stream(3))


class TupleOutput(TinyClassifier):
    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        return self.net(x), x

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0])[0], batch[1])


def test_a_model_without_logits_is_a_clear_error_naming_lwf() -> None:
    model = ContinualModule(TupleOutput(in_features=8, num_classes=6))
    with pytest.raises(TypeError, match=r"LwF distils the logits .* expected logits \[B, C\], got tuple"):
        quiet_trainer(callbacks=[LwF()]).fit(model, datamodule=make_tensor_stream(3))


@pytest.mark.parametrize(
    ("index", "reshape", "error", "match"),
    [
        (
            1,
            lambda logits: logits[..., None],
            TypeError,
            r"LwF distils logits \[B, C\]; the step's logits have shape \(3, 6, 1\)",
        ),
        (
            2,
            lambda logits: logits[:, :3],
            ValueError,
            r"LwF: earlier experiences used the outputs \[0, 1, 2, 3\], .* only 3",
        ),
    ],
    ids=["logits-must-be-two-dimensional", "too-few-outputs-for-the-earlier-classes"],
)
def test_step_logits_the_term_cannot_read(
    index: int, reshape: Callable[[torch.Tensor], torch.Tensor], error: type[Exception], match: str
) -> None:
    dm = make_tensor_stream(num_experiences=3, num_classes=6)
    model = TinyClassifier(in_features=8, num_classes=6)
    callback = LwF()
    started(callback, model, dm, index)
    x = torch.randn(3, 8)
    with pytest.raises(error, match=match):
        callback.loss_terms(step_of(model, (x, torch.zeros(3, dtype=torch.long)), reshape(model(x))))


# ------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    model = ContinualModule(MultiHead(hidden=4, num_tasks=2))
    callback = LwF()
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2, callbacks=[callback])
    dm = task_stream(num_tasks=2)
    trainer.fit(model, datamodule=dm)
    trainer.fit(model, datamodule=dm)  # distils head 0 through an extra forward inside the DDP step
    logged = trainer.callback_metrics["train/lwf_loss"]
    state = {"state": model.state_dict(), "teacher": callback.state_dict()["teacher"], "lwf_loss": logged}
    torch.save(state, Path(out) / f"rank{rank}.pt")


@pytest.mark.ddp
def test_ddp_multi_head_ranks_agree(tmp_path: Path) -> None:
    ranks = two_process_results(_ddp_worker, tmp_path)
    assert float(ranks[0]["lwf_loss"]) > 0
    assert_ranks_agree(ranks, ("state", "teacher"))
