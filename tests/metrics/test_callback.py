"""ContinualMetrics in real Trainer runs: logged keys and steps, values against references, state, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualCallback, ContinualModule, fit_stream
from lightning_cl.core.callback import JointData
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.metrics import ContinualMetrics, FlipCounts
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer

TRAINING = [
    "minibatch_accuracy",
    "minibatch_loss",
    "epoch_accuracy",
    "epoch_loss",
    "experience_accuracy",
    "experience_loss",
    "experience_time",
]
STREAM = [
    "stream_accuracy",
    "stream_loss",
    "stream_topk_accuracy",
    "class_accuracy",
    "confusion_matrix",
    "seen_classes_accuracy",
    "flip_rates",
    "average_accuracy",
    "forgetting",
    "backward_transfer",
    "forward_transfer",
    "system",
]


class Recording(TinyClassifier):
    """Records (correct, size, loss) of every training step; optionally returns its logits."""

    def __init__(self, return_logits: bool, dropout: float = 0.0) -> None:
        super().__init__(in_features=8, num_classes=6)
        self.return_logits = return_logits
        if dropout:
            self.net.insert(2, nn.Dropout(dropout))
        self.steps: list[tuple[int, int, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        logits = self(batch[0])
        loss = F.cross_entropy(logits, batch[1])
        self.steps.append((int((logits.argmax(1) == batch[1]).sum()), len(batch[1]), loss.item()))
        return {"loss": loss, "logits": logits} if self.return_logits else loss


def read_csv(trainer: L.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:  # type: ignore[union-attr]
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def csv_trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    return quiet_trainer(
        max_epochs=2, logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=1, callbacks=callbacks, **kwargs
    )


# --------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("return_logits", "accumulate"), [(True, 1), (False, 1), (True, 2)], ids=["logits", "forward", "accumulate"]
)
def test_training_metrics_at_every_granularity(tmp_path: Path, return_logits: bool, accumulate: int) -> None:
    torch.manual_seed(0)
    user = Recording(return_logits)
    callback = ContinualMetrics(TRAINING)
    trainer = csv_trainer(tmp_path, [callback], accumulate_grad_batches=accumulate)
    fit_stream(trainer, ContinualModule(user), make_tensor_stream(3), evaluate_initial=False)
    rows = read_csv(trainer)
    steps = np.array(user.steps, dtype=np.float64)  # 3 experiences x 2 epochs x 3 batches (16, 16, 8)
    assert steps.shape == (18, 3)
    correct, size, loss = steps.T

    if accumulate == 1:  # (Lightning writes step values once per optimizer step)
        # minibatch: one value per step, in order
        np.testing.assert_allclose([v for _, v in column(rows, "train/acc_step")], correct / size, rtol=1e-6)
        np.testing.assert_allclose([v for _, v in column(rows, "train/loss_step")], loss, rtol=1e-5)

    # epoch: per-sample means over its 3 steps
    epochs = np.arange(18) // 3
    acc_epoch = [correct[epochs == e].sum() / size[epochs == e].sum() for e in range(6)]
    loss_epoch = [(loss * size)[epochs == e].sum() / size[epochs == e].sum() for e in range(6)]
    np.testing.assert_allclose([v for _, v in column(rows, "train/acc_epoch")], acc_epoch, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in column(rows, "train/loss_epoch")], loss_epoch, rtol=1e-5)

    # experience: over its 2 epochs, logged once at its last step
    experiences = np.arange(18) // 6
    acc_experience = [correct[experiences == k].sum() / size[experiences == k].sum() for k in range(3)]
    experience_steps = [2 * math.ceil(3 / accumulate) * (k + 1) for k in range(3)]  # optimizer steps
    logged = column(rows, "train/acc_experience")
    assert [s for s, _ in logged] == experience_steps
    np.testing.assert_allclose([v for _, v in logged], acc_experience, rtol=1e-6)
    assert [r["experience"] for r in callback.experience_results] == [0, 1, 2]
    for record in callback.experience_results:
        assert record["experience/seconds"] > 0
        assert record["experience/samples_per_second"] == pytest.approx(80 / record["experience/seconds"])
    all_steps = [int(r["step"]) for r in rows]
    assert all_steps == sorted(all_steps)


def test_the_extra_forward_leaves_training_unchanged() -> None:
    # with dropout: a forward in training mode would draw random numbers and change training
    params = []
    callback = ContinualMetrics(["epoch_accuracy", "experience_accuracy"])
    for callbacks in ([], [callback]):
        torch.manual_seed(0)
        model = ContinualModule(Recording(return_logits=False, dropout=0.5))
        trainer = quiet_trainer(callbacks=callbacks)
        fit_stream(trainer, model, make_tensor_stream(2), evaluate_initial=False)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)
    assert [r["experience"] for r in callback.experience_results] == [0, 1]


def test_minibatch_loss_is_left_to_a_module_that_logs_it() -> None:
    torch.manual_seed(0)
    model = ContinualModule(Recording(return_logits=True), log_loss_on_step=True)
    trainer = quiet_trainer(callbacks=[ContinualMetrics(["minibatch_loss", "experience_loss"])])
    trainer.fit(model, datamodule=make_tensor_stream(2))
    assert float(trainer.callback_metrics["train/loss_step"]) == pytest.approx(model.module.steps[-1][2])
    # experience values are logged after the last hook that may self.log; they reach callback_metrics too
    steps = np.array(model.module.steps)
    expected = (steps[:, 1] * steps[:, 2]).sum() / steps[:, 1].sum()
    assert float(trainer.callback_metrics["train/loss_experience"]) == pytest.approx(expected, rel=1e-5)


class MemoryOfOnes(ContinualCallback):
    """Draws a replay batch alongside each batch and appends it: the user's step sees a larger batch."""

    def joint_datasets(self, datamodule: Any, experience: Any) -> dict[str, JointData]:
        return {"memory": JointData(InMemoryDataset(torch.ones(5, 8), torch.full((5,), 5)), 4)}

    def prepare_batch(self, pl_module: Any, batch: Any, extra: Any) -> Any:
        (x, y), (mx, my) = batch, extra["memory"]
        return [torch.cat([x, mx]), torch.cat([y, my])]


def test_with_a_replay_batch_the_accuracy_is_that_of_the_current_samples() -> None:
    torch.manual_seed(0)
    user = Recording(return_logits=True)  # logits of 20, 20 and 12 samples: not the current batch
    callback = ContinualMetrics(["epoch_accuracy", "experience_accuracy", "experience_time"])
    correct_before_step = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            x, y = batch["current"]
            user.eval()
            with torch.no_grad():
                correct_before_step.append(int((user(x).argmax(1) == y).sum()))
            user.train()

    trainer = quiet_trainer(callbacks=[MemoryOfOnes(), callback, Probe()])
    trainer.fit(ContinualModule(user), datamodule=make_tensor_stream(3))
    record = callback.experience_results[0]
    assert [n for _, n, _ in user.steps] == [20, 20, 12]
    assert record["train/acc_experience"] == pytest.approx(sum(correct_before_step) / 40)
    assert record["experience/samples_per_second"] * record["experience/seconds"] == pytest.approx(40)


# ----------------------------------------------------------------------------------------- stream
def test_stream_keys_are_logged_at_the_global_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = ContinualMetrics(STREAM, top_k=2)
    trainer = csv_trainer(tmp_path, [callback])
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    fit_stream(trainer, model, make_tensor_stream(3))
    rows = read_csv(trainer)
    every, trained = [0, 6, 12, 18], [6, 12, 18]
    expected_steps = {
        "stream/accuracy": every,
        "stream/loss": every,
        "test/loss_exp2": every,
        "stream/top2_accuracy": every,
        "test/top2_acc_exp1": every,
        "test/acc_class5": every,
        "stream/seen_classes_accuracy": trained,
        "stream/negative_flip_rate": trained,
        "stream/positive_flip_rate": trained,
    }
    for key, steps in expected_steps.items():
        assert [s for s, _ in column(rows, key)] == steps, key
    assert not any("confusion" in key for key in rows[0])  # not a scalar: not logged
    all_steps = [int(r["step"]) for r in rows]
    assert all_steps == sorted(all_steps)
    assert [r["row"] for r in callback.results] == [-1, 0, 1, 2]
    assert [r["step"] for r in callback.results] == every
    assert set(expected_steps) <= set(trainer.callback_metrics)
    # the values logged are the values kept
    for key in ("stream/loss", "stream/negative_flip_rate", "test/acc_class0"):
        assert column(rows, key)[-1][1] == pytest.approx(callback.results[-1][key])
    # R-derived metrics are ContinualModule's, recorded here
    result = model.stream_result
    assert callback.results[-1]["stream/forgetting"] == pytest.approx(result.forgetting)
    assert callback.results[-1]["stream/forward_transfer"] == pytest.approx(result.forward_transfer)
    R = result.accuracy_matrix
    for j in range(3):
        assert callback.results[-1][f"test/acc_exp{j}"] == pytest.approx(float(R[-1, j]))
    assert callback.results[-1]["stream/accuracy"] == pytest.approx(float(R[-1].mean()))  # equal-sized experiences
    assert callback.results[-1]["system/peak_ram_mb"] > 0 and callback.results[-1]["system/cpu_seconds"] > 0
    # system values: at each training epoch end (Lightning writes those at the step before) and each test
    assert [s for s, _ in column(rows, "system/ram_mb")] == [0, 2, 5, 6, 8, 11, 12, 14, 17, 18]


def predictions(model: nn.Module, dm: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, target) of every test experience, computed directly."""
    out = []
    with torch.no_grad():
        for experience in dm.test_stream:
            x, y = experience.dataset.__getitems__(list(range(len(experience)))).tensors[:2]
            out.append((model(x), y))
    return out


def test_stream_values_match_two_saved_models(tmp_path: Path) -> None:
    torch.manual_seed(1)
    callback = ContinualMetrics(STREAM[:7], top_k=3)
    dm, user = make_tensor_stream(3), TinyClassifier(in_features=8, num_classes=6)
    model, trainer = ContinualModule(user), quiet_trainer(callbacks=[callback])
    snapshots = []
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
        snapshots.append(predictions(user, dm))
        trainer.test(model, datamodule=dm, verbose=False)
    old, new = snapshots
    result = callback.results[-1]

    # flips: per experience, samples right before and wrong now, and the reverse
    flips = np.zeros((3, 3), dtype=np.int64)
    for j, ((old_logits, y), (new_logits, _)) in enumerate(zip(old, new)):
        was, now = (old_logits.argmax(1) == y).numpy(), (new_logits.argmax(1) == y).numpy()
        flips[:, j] = (was & ~now).sum(), (~was & now).sum(), len(y)
    assert flips[0].sum() > 0 and flips[1].sum() > 0  # both kinds occur: a mix-up would show
    np.testing.assert_array_equal(result["flip_counts"].numpy(), flips)
    assert result["stream/negative_flip_rate"] == flips[0].sum() / flips[2].sum()
    assert result["stream/positive_flip_rate"] == flips[1].sum() / flips[2].sum()

    # confusion matrix and what follows from it, from the new model's predictions
    confusion = np.zeros((3, 6, 6), dtype=np.int64)
    for j, (logits, y) in enumerate(new):
        for t, p in zip(y.tolist(), logits.argmax(1).tolist()):
            confusion[j, t, p] += 1
    np.testing.assert_array_equal(result["confusion_matrix"].numpy(), confusion)
    for c in range(6):
        assert result[f"test/acc_class{c}"] == pytest.approx(confusion[:, c, c].sum() / confusion[:, c].sum())
    seen = [0, 1, 2, 3]  # classes of experiences 0 and 1
    right = sum(confusion[:, c, c].sum() for c in seen)
    assert result["stream/seen_classes_accuracy"] == pytest.approx(right / confusion[:, seen].sum())

    # loss and top-k
    for j, (logits, y) in enumerate(new):
        assert result[f"test/loss_exp{j}"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
        top = logits.topk(3, dim=1).indices
        assert result[f"test/top3_acc_exp{j}"] == pytest.approx(float((top == y[:, None]).any(1).float().mean()))
    every = torch.cat([F.cross_entropy(logits, y, reduction="none") for logits, y in new])
    assert result["stream/loss"] == pytest.approx(float(every.mean()), rel=1e-5)


def test_a_model_with_more_outputs_than_classes_gets_a_larger_confusion_matrix() -> None:
    torch.manual_seed(0)
    callback = ContinualMetrics(["confusion_matrix", "class_accuracy"])
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=9))
    trainer = quiet_trainer(callbacks=[callback])
    trainer.test(model, datamodule=make_tensor_stream(3), verbose=False)
    assert callback.results[0]["confusion_matrix"].shape == (3, 9, 9)
    assert int(callback.results[0]["confusion_matrix"].sum()) == 120
    # classes 6-8 have no test sample: no accuracy logged for them
    assert {k for k in trainer.callback_metrics if "acc_class" in k} == {f"test/acc_class{c}" for c in range(6)}


# ------------------------------------------------------------------------------------------ state
def test_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = ContinualMetrics(["epoch_accuracy", "experience_accuracy", "confusion_matrix", "flip_rates"])
    trainer = quiet_trainer(callbacks=[callback])
    fit_stream(trainer, ContinualModule(TinyClassifier(in_features=8, num_classes=6)), make_tensor_stream(2))
    torch.save(callback.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # tensors and primitives only
    restored = ContinualMetrics(["epoch_accuracy", "experience_accuracy", "confusion_matrix", "flip_rates"])
    restored.load_state_dict(state)
    assert restored.experience_results == callback.experience_results
    assert len(restored.results) == 3
    for a, b in zip(restored.results, callback.results):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key])
            else:
                assert a[key] == b[key]
    flips = state["flips"]
    assert flips["world_size"] == 1 and [int(n) for n in flips["lengths"][0]] == [60, 60]
    assert callback.state_key != ContinualMetrics(["flip_rates"]).state_key  # two instances do not collide


def test_flip_reference_of_each_rank_is_restored_or_dropped() -> None:
    shards = [torch.tensor([1, 0, 1], dtype=torch.uint8), torch.tensor([0, 0], dtype=torch.uint8)]
    state = {"world_size": 2, "shards": shards, "lengths": [torch.tensor([2, 1]), torch.tensor([1, 1])]}
    callback = ContinualMetrics(["flip_rates"])
    callback._flips = FlipCounts(2)
    callback._restore_flips(SimpleNamespace(world_size=2, global_rank=1), state)  # type: ignore[arg-type]
    assert [c.tolist() for c in callback._flips.reference_state()["correct"]] == [[False], [False]]
    callback._flips.load_reference_state({})
    with pytest.warns(UserWarning, match="from 2 process\\(es\\), this run has 1; .* restart one evaluation later"):
        callback._restore_flips(SimpleNamespace(world_size=1, global_rank=0), state)  # type: ignore[arg-type]
    assert not callback._flips.has_reference


CHECKPOINTED = ["epoch_accuracy", "experience_accuracy", "experience_loss", "stream_loss", "confusion_matrix"]
CHECKPOINTED += ["flip_rates"]


def checkpointing_trainer(path: Path) -> tuple[L.Trainer, ContinualMetrics]:
    callback = ContinualMetrics(CHECKPOINTED)
    saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[callback, saver]), callback


def run_model(seed: int = 0) -> ContinualModule:
    torch.manual_seed(seed)
    return ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.05))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[ContinualMetrics, Path]:
    path = tmp_path_factory.mktemp("ckpts")
    trainer, callback = checkpointing_trainer(path)
    model, dm = run_model(), make_tensor_stream(3)
    trainer.test(model, datamodule=dm, verbose=False)
    for k in range(3):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
        trainer.save_checkpoint(path / f"after_exp{k}.ckpt")
    return callback, path


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.tolist() if isinstance(v, torch.Tensor) else v
        for k, v in record.items()
        if not k.startswith(("system/", "experience/"))
    }


# epochs 0-1 train experience 0, 2-3 experience 1, 4-5 experience 2
@pytest.mark.parametrize(
    "name", ["after_exp0", "epoch=2", "epoch=1"], ids=["boundary", "mid-experience", "last-epoch-of-experience"]
)
def test_resume_continues_every_metric(uninterrupted: Any, name: str, tmp_path: Path) -> None:
    expected, path = uninterrupted
    trainer, callback = checkpointing_trainer(tmp_path)
    fit_stream(trainer, run_model(seed=123), make_tensor_stream(3), ckpt_path=path / f"{name}.ckpt")
    assert [comparable(r) for r in callback.results] == [comparable(r) for r in expected.results]
    assert [comparable(r) for r in callback.experience_results] == [comparable(r) for r in expected.experience_results]


# ----------------------------------------------------------------------------------------- errors
def test_unknown_metric_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"`metrics`: unknown name 'acc'; expected names among minibatch_accuracy, "):
        ContinualMetrics(["stream_loss", "acc"])


@pytest.mark.parametrize("metrics", ["stream_loss", 3])
def test_metrics_must_be_a_sequence_of_names(metrics: Any) -> None:
    with pytest.raises(TypeError, match="`metrics`: expected a sequence of metric names"):
        ContinualMetrics(metrics)


@pytest.mark.parametrize("top_k", [0, -3, True, 2.5])
def test_top_k_must_be_a_positive_integer(top_k: Any) -> None:
    with pytest.raises(ValueError, match="`top_k`: expected a positive integer"):
        ContinualMetrics(["stream_topk_accuracy"], top_k=top_k)


def test_top_k_above_the_classes_of_the_stream_fails_at_setup() -> None:
    trainer = quiet_trainer(callbacks=[ContinualMetrics(["stream_topk_accuracy"], top_k=7)])
    with pytest.raises(ValueError, match=r"`top_k`: expected at most the number of classes of the stream \(6\) .* 7"):
        trainer.test(ContinualModule(TinyClassifier(in_features=8, num_classes=6)), datamodule=make_tensor_stream(3))
    # not asked for top-k accuracy: top_k is not checked
    trainer = quiet_trainer(callbacks=[ContinualMetrics(["stream_loss"], top_k=7)])
    trainer.test(ContinualModule(TinyClassifier(in_features=8, num_classes=6)), datamodule=make_tensor_stream(3))


def test_forward_transfer_without_an_initial_evaluation_is_a_clear_error() -> None:
    message = r"'forward_transfer' needs the accuracy of the untrained model, but training starts without an initial"
    trainer = quiet_trainer(callbacks=[ContinualMetrics(["forward_transfer"])])
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    with pytest.raises(ValueError, match=message):
        fit_stream(trainer, model, make_tensor_stream(2), evaluate_initial=False)
    # trained elsewhere, then evaluated with the callback: the first evaluation after training refuses
    dm = make_tensor_stream(2)
    quiet_trainer().fit(model, datamodule=dm)
    trainer = quiet_trainer(callbacks=[ContinualMetrics(["forward_transfer"])])
    with pytest.raises(ValueError, match=r"but the test after experience 0 runs without an initial evaluation"):
        trainer.test(model, datamodule=dm, verbose=False)


def test_needs_a_continual_module() -> None:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8), torch.zeros(4).long()))
    trainer = quiet_trainer(callbacks=[ContinualMetrics()])
    with pytest.raises(TypeError, match=r"ContinualMetrics: expected the model to be a lightning_cl\.ContinualModule"):
        trainer.fit(TinyClassifier(in_features=8, num_classes=6), train_dataloaders=loader)
