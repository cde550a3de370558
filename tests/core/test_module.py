"""ContinualModule: wrapping, hooks, logging, loss protocol, per-experience behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualCallback, ContinualModule, fit_stream
from lightning_cl.core.callback import JointData, TrainingStep
from lightning_cl.core.data import InMemoryDataset
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def stream(**kwargs: Any):
    return make_tensor_stream(num_experiences=3, **kwargs)


def tiny(**kwargs: Any) -> TinyClassifier:
    kwargs.setdefault("in_features", 8)
    kwargs.setdefault("num_classes", 6)
    return TinyClassifier(**kwargs)


def test_rejects_what_it_cannot_wrap() -> None:
    with pytest.raises(TypeError, match=r"`module`: expected a lightning\.LightningModule, got Linear"):
        ContinualModule(nn.Linear(2, 2))  # type: ignore[arg-type]

    class NoForward(L.LightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.tensor(0.0)

    with pytest.raises(TypeError, match="defines no `forward`"):
        ContinualModule(NoForward())
    with pytest.raises(TypeError, match="wrap once"):
        ContinualModule(ContinualModule(tiny()))  # type: ignore[arg-type]


def test_each_fit_trains_its_epochs_with_one_trainer() -> None:
    dm = stream()  # 40 samples per experience, batch 16 -> 3 batches per epoch
    model = ContinualModule(tiny())
    trainer = quiet_trainer(max_epochs=2)
    steps = []
    for k in range(3):
        assert dm.current_experience == k
        trainer.fit(model, datamodule=dm)
        steps.append(trainer.global_step)
    assert steps == [6, 12, 18]
    assert trainer.current_epoch == 6
    assert dm.current_experience == 3


def test_max_steps_is_per_experience() -> None:
    dm = stream()
    model = ContinualModule(tiny())
    trainer = quiet_trainer(max_epochs=-1, max_steps=4)
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 12


def test_fit_past_the_end_is_a_clear_error() -> None:
    dm = make_tensor_stream(num_experiences=2)
    model = ContinualModule(tiny())
    trainer = quiet_trainer()
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    with pytest.raises(RuntimeError, match="the stream is finished: all 2 experiences"):
        trainer.fit(model, datamodule=dm)


def test_needs_a_stream_datamodule() -> None:
    model = ContinualModule(tiny())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8), torch.zeros(4).long()))
    with pytest.raises(TypeError, match="StreamDataModule"):
        quiet_trainer().fit(model, train_dataloaders=loader)


def test_optimizer_is_recreated_per_experience() -> None:
    created = []

    class Recording(TinyClassifier):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            opt = torch.optim.Adam(self.parameters(), lr=0.01)
            created.append(opt)
            return opt

    dm = stream()
    model = ContinualModule(Recording(in_features=8, num_classes=6))
    trainer = quiet_trainer()
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert len({id(o) for o in created}) == 3


def test_user_logging_hooks_and_keys_keep_working() -> None:
    calls: list[str] = []

    class Hooked(TinyClassifier):
        def on_train_epoch_start(self) -> None:
            calls.append("epoch_start")
            self.log("from_hook", 1.0)

        def on_fit_start(self) -> None:
            calls.append("fit_start")

    dm = stream()
    user = Hooked(in_features=8, num_classes=6)
    model = ContinualModule(user)
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert calls == ["fit_start", "epoch_start", "epoch_start"]
    assert {"user_loss", "from_hook", "train/loss"} <= set(trainer.callback_metrics)
    assert list(model.state_dict()) == list(user.state_dict())


def test_step_returning_a_dict() -> None:
    class DictStep(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            logits = self(batch[0])
            return {"loss": F.cross_entropy(logits, batch[1]), "logits": logits}

    dm = stream()
    model = ContinualModule(DictStep(in_features=8, num_classes=6))
    trainer = quiet_trainer()
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


class ConstantTerm(ContinualCallback):
    """Adds `weight * sum(params**2)`; records the logits it was given."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.logit_shapes: list[tuple[int, ...]] = []

    def loss_terms(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        self.logit_shapes.append(tuple(step.logits.shape))
        return {"l2": self.weight * sum((p**2).sum() for p in step.module.parameters())}


def test_loss_terms_change_training_like_the_same_penalty_in_the_loss() -> None:
    weight = 0.05

    class Penalised(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = F.cross_entropy(self(batch[0]), batch[1])
            return loss + weight * sum((p**2).sum() for p in self.parameters())

    results = []
    for module, callbacks in ((Penalised, []), (TinyClassifier, [ConstantTerm(weight)])):
        torch.manual_seed(0)
        model = ContinualModule(module(in_features=8, num_classes=6))
        trainer = quiet_trainer(callbacks=callbacks)
        trainer.fit(model, datamodule=stream())
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        if callbacks:
            assert "train/l2_loss" in trainer.callback_metrics
            assert callbacks[0].logit_shapes[0] == (16, 6)
    torch.testing.assert_close(results[0], results[1])


class ZeroLoss(ContinualCallback):
    def task_loss(self, step: TrainingStep) -> torch.Tensor:
        return step.loss * 0.0


def test_task_loss_replacement_and_its_conflict() -> None:
    torch.manual_seed(0)
    model = ContinualModule(tiny())
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(callbacks=[ZeroLoss()])
    trainer.fit(model, datamodule=stream())
    for a, b in zip(before, model.parameters()):
        torch.testing.assert_close(a, b.detach())  # zero loss, plain SGD: nothing moves
    trainer = quiet_trainer(callbacks=[ZeroLoss(), ZeroLoss()])
    with pytest.raises(RuntimeError, match="at most one CL method"):
        trainer.fit(ContinualModule(tiny()), datamodule=stream())


class FreezeFirstLayer(ContinualCallback):
    """A gradient edit in Lightning's on_before_optimizer_step."""

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        for p in pl_module.module.net[1].parameters():
            p.grad.zero_()


def test_gradient_edits_in_on_before_optimizer_step() -> None:
    model = ContinualModule(tiny())
    first = [p.detach().clone() for p in model.module.net[1].parameters()]
    last = [p.detach().clone() for p in model.module.net[3].parameters()]
    quiet_trainer(callbacks=[FreezeFirstLayer()]).fit(model, datamodule=stream())
    for a, p in zip(first, model.module.net[1].parameters()):
        torch.testing.assert_close(a, p.detach())
    assert any(not torch.equal(a, p.detach()) for a, p in zip(last, model.module.net[3].parameters()))


class MemoryOfOnes(ContinualCallback):
    """Draws batches of a 'memory' alongside the current ones and appends them to the batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def on_experience_start(self, trainer: L.Trainer, pl_module: Any, experience: Any) -> None:
        self.starts.append(experience.index)

    def on_experience_end(self, trainer: L.Trainer, pl_module: Any, experience: Any) -> None:
        self.ends.append(experience.index)

    def joint_datasets(self, datamodule: Any, experience: Any) -> dict[str, JointData]:
        memory = InMemoryDataset(torch.ones(5, 8), torch.full((5,), 5))
        return {"memory": JointData(memory, 4)}

    def prepare_batch(self, pl_module: Any, batch: Any, extra: Any) -> Any:
        x, y = batch
        mx, my = extra["memory"]
        self.seen.append((len(x), len(mx)))
        return [torch.cat([x, mx]), torch.cat([y, my])]


def test_joint_data_and_experience_events() -> None:
    callback = MemoryOfOnes()
    model = ContinualModule(tiny())
    trainer = quiet_trainer(callbacks=[callback])
    for _ in range(2):
        trainer.fit(model, datamodule=stream())
    assert trainer.global_step == 6  # the current experience sets the epoch length: 3 batches
    assert callback.seen[:3] == [(16, 4), (16, 4), (8, 4)]
    assert callback.starts == [0, 0] and callback.ends == [0, 0]  # a new stream object each fit


def test_experience_events_follow_the_stream() -> None:
    callback = MemoryOfOnes()
    dm = stream()
    trainer = quiet_trainer(callbacks=[callback])
    model = ContinualModule(tiny())
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert callback.starts == [0, 1, 2] and callback.ends == [0, 1, 2]


def test_early_stopping_is_reset_per_experience() -> None:
    # patience 0 on a loss that cannot improve on the previous experience's best would stop
    # every later experience after one epoch without the reset
    class Constant(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx) * 0.0 + 10.0

    stopper = EarlyStopping(monitor="train/loss", patience=1, mode="min", check_on_train_epoch_end=True)
    dm = stream()
    model = ContinualModule(Constant(in_features=8, num_classes=6))
    trainer = quiet_trainer(max_epochs=5, callbacks=[stopper])
    epochs = []
    for _ in range(3):
        start = trainer.current_epoch
        trainer.fit(model, datamodule=dm)
        epochs.append(trainer.current_epoch - start)
    assert epochs == [2, 2, 2]  # epoch 1 no improvement -> stop, for every experience
    assert dm.current_experience == 3


def test_target_outside_the_outputs_is_a_clear_error() -> None:
    model = ContinualModule(tiny(num_classes=4))  # the stream has classes 0..5
    trainer = quiet_trainer()
    with pytest.raises(ValueError, match=r"has 4 outputs but test experience 2 holds class id 5"):
        trainer.test(model, datamodule=stream())
    dm = stream(class_order=[4, 5, 0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"has 4 outputs but train experience 0 holds class id 5"):
        quiet_trainer().fit(ContinualModule(tiny(num_classes=4)), datamodule=dm)


def test_forward_with_task_labels_gets_them_in_evaluation() -> None:
    from lightning_cl.benchmarks import task_incremental

    class MultiHead(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(8, 16)
            self.heads = nn.ModuleList(nn.Linear(16, 2) for _ in range(3))
            self.seen_tasks: set[int] = set()

        def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
            self.seen_tasks.update(task_labels.tolist())
            h = torch.relu(self.body(x))
            out = torch.stack([head(h) for head in self.heads], 1)
            return out[torch.arange(len(x)), task_labels]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y, t = batch
            return F.cross_entropy(self(x, t), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(20)
    x = (torch.randn(6, 8, generator=g) * 3)[y] + torch.randn(len(y), 8, generator=g)
    data = InMemoryDataset(x, y)
    dm = task_incremental(data, data, num_experiences=3, class_order=list(range(6)), batch_size=16)
    user = MultiHead()
    model = ContinualModule(user)
    result = fit_stream(quiet_trainer(max_epochs=3), model, dm, evaluate_initial=False)
    assert user.seen_tasks == {0, 1, 2}
    assert result.accuracy_matrix.shape == (3, 3)
    assert float(result.accuracy_matrix.diagonal().min()) > 0.9  # separate heads: blobs are easy


def test_checkpoint_of_a_wrapped_run_loads_into_the_bare_module(tmp_path: Any) -> None:
    model = ContinualModule(tiny())
    trainer = quiet_trainer()
    trainer.fit(model, datamodule=stream())
    path = tmp_path / "wrapped.ckpt"
    trainer.save_checkpoint(path)
    bare = TinyClassifier.load_from_checkpoint(path)  # hyperparameters come from the checkpoint
    assert bare.hparams.num_classes == 6
    for (k1, v1), (k2, v2) in zip(bare.state_dict().items(), model.module.state_dict().items()):
        assert k1 == k2
        torch.testing.assert_close(v1, v2)


def test_model_checkpoint_best_is_per_experience(tmp_path: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Rising(TinyClassifier):
        """A monitored loss that grows with the epoch: only the first epoch of the stream would ever be 'best'."""

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("score", float(self.current_epoch), on_step=False, on_epoch=True)
            return loss

    saver = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="min", save_top_k=1, filename="{epoch}")
    dm = stream()
    model = ContinualModule(Rising(in_features=8, num_classes=6))
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saver])
    best = []
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
        best.append(Path(saver.best_model_path).name)
    assert best == ["epoch=0.ckpt", "epoch=2.ckpt", "epoch=4.ckpt"]  # the first epoch of each experience


def test_predict_on_plain_dataloaders_needs_no_stream() -> None:
    model = ContinualModule(tiny())
    loader = torch.utils.data.DataLoader(torch.randn(5, 8), batch_size=2)
    predictions = quiet_trainer().predict(model, dataloaders=loader)
    assert torch.cat(predictions).shape == (5, 6)


def test_stream_metrics_are_logged_at_the_global_step(tmp_path: Any) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    dm, model = stream(), ContinualModule(tiny())
    trainer = quiet_trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="run"))
    steps = [0]
    trainer.test(model, datamodule=dm, verbose=False)
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
        steps.append(trainer.global_step)
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [int(r["step"]) for r in rows if r.get("test/acc_exp0")]
    assert logged == steps == [0, 6, 12, 18]
    stream_rows = [r for r in rows if r.get("stream/average_accuracy")]
    assert [int(r["step"]) for r in stream_rows] == [6, 12, 18]
    assert float(stream_rows[-1]["stream/average_accuracy"]) == pytest.approx(model.stream_result.average_accuracy)
    assert any(r.get("train/loss") for r in rows)


class AdamClassifier(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return self.optimizer


@pytest.mark.parametrize("keep", [False, True])
def test_optimizer_state_across_experiences(keep: bool) -> None:
    class Grow(ContinualCallback):
        """Replaces the last layer at experience 1 by a wider one (as a growing head would)."""

        def on_experience_start(self, trainer: Any, pl_module: Any, experience: Any) -> None:
            if experience.index == 1:
                pl_module.module.net[3] = nn.Linear(32, 7)

    seen: dict[str, Any] = {}

    class Spy(ContinualCallback):
        def on_experience_end(self, trainer: Any, pl_module: Any, experience: Any) -> None:
            optimizer = pl_module.module.optimizer
            seen["end"] = {n: optimizer.state[p]["exp_avg"].clone() for n, p in pl_module.module.named_parameters()}

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            optimizer = pl_module.module.optimizer
            state = {n: optimizer.state[p].get("exp_avg") for n, p in pl_module.module.named_parameters()}
            seen["start"] = {n: None if v is None else v.clone() for n, v in state.items()}  # Adam updates in place

    model = ContinualModule(AdamClassifier(in_features=8, num_classes=6), keep_optimizer_state=keep)
    trainer = quiet_trainer(callbacks=[Grow(), Spy()])
    dm = stream()
    trainer.fit(model, datamodule=dm)
    end_of_first = seen["end"]
    trainer.fit(model, datamodule=dm)
    start = seen["start"]
    if keep:
        torch.testing.assert_close(start["net.1.weight"], end_of_first["net.1.weight"])
    else:
        assert start["net.1.weight"] is None
    assert start["net.3.weight"] is None  # the grown layer starts fresh either way
