"""fit_stream: the whole protocol, its equivalence with the explicit loop, resume and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_cl import ContinualModule, StreamResult, fit_stream
from lightning_cl.metrics import functional as F
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def run_model(seed: int = 0) -> ContinualModule:
    torch.manual_seed(seed)
    return ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.05))


def test_fit_stream_result() -> None:
    dm = make_tensor_stream(num_experiences=3)
    result = fit_stream(quiet_trainer(max_epochs=4), run_model(), dm)
    assert isinstance(result, StreamResult)
    R = result.accuracy_matrix
    assert R.shape == (3, 3)
    assert bool(((R >= 0) & (R <= 1)).all())
    assert result.average_accuracy == pytest.approx(F.average_accuracy(R))
    assert result.forgetting == pytest.approx(F.forgetting(R))
    assert result.backward_transfer == pytest.approx(F.backward_transfer(R))
    assert result.initial_accuracy is not None and result.initial_accuracy.shape == (3,)
    assert result.forward_transfer == pytest.approx(F.forward_transfer(R, result.initial_accuracy))
    assert len(result.fit_seconds) == 3 and all(s > 0 for s in result.fit_seconds)
    assert float(R.diagonal().min()) > 0.8  # each experience is learned...
    assert result.forgetting > 0.3  # ...and naive fine-tuning forgets it (class-incremental)
    assert "average accuracy" in result.table()


def test_without_initial_evaluation_there_is_no_forward_transfer() -> None:
    result = fit_stream(quiet_trainer(), run_model(), make_tensor_stream(2), evaluate_initial=False)
    assert result.forward_transfer is None and result.initial_accuracy is None


def test_explicit_loop_equals_fit_stream() -> None:
    results = []
    for explicit in (False, True):
        dm, model, trainer = make_tensor_stream(3), run_model(), quiet_trainer(max_epochs=2)
        if explicit:
            trainer.test(model, datamodule=dm)
            for _ in range(dm.num_experiences):
                trainer.fit(model, datamodule=dm)
                trainer.test(model, datamodule=dm)
            results.append(model.stream_result)
        else:
            results.append(fit_stream(trainer, model, dm))
    torch.testing.assert_close(results[0].accuracy_matrix, results[1].accuracy_matrix)
    torch.testing.assert_close(results[0].initial_accuracy, results[1].initial_accuracy)


def test_test_counts_every_sample_once_and_logs_stream_keys() -> None:
    dm, model, trainer = make_tensor_stream(3), run_model(), quiet_trainer()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    metrics = trainer.callback_metrics
    assert {f"test/acc_exp{j}" for j in range(3)} <= set(metrics)
    assert {"stream/average_accuracy", "stream/forgetting", "stream/backward_transfer"} <= set(metrics)
    assert int(model.stream_accuracy.total.sum()) == 0  # reset after compute
    assert model.accuracy_matrix.shape == (1, 3)


def checkpointing_trainer(path: Path) -> L.Trainer:
    saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return quiet_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[saver])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamResult, list[torch.Tensor], Path]:
    path = tmp_path_factory.mktemp("ckpts")
    model, dm, trainer = run_model(), make_tensor_stream(3), checkpointing_trainer(path)
    trainer.test(model, datamodule=dm)
    for k in range(dm.num_experiences):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm)
        trainer.save_checkpoint(path / f"after_exp{k}.ckpt")  # at the boundary, after the test
    return model.stream_result, [p.detach().clone() for p in model.parameters()], path


# epochs 0-2 train experience 0, 3-5 experience 1, 6-8 experience 2
@pytest.mark.parametrize(
    "name",
    ["after_exp0", "after_exp1", "epoch=4", "epoch=2", "epoch=5"],
    ids=["boundary-0", "boundary-1", "mid-experience", "last-epoch-0", "last-epoch-1"],
)
def test_resume_gives_the_uninterrupted_result(uninterrupted: Any, name: str, tmp_path: Path) -> None:
    expected, params, path = uninterrupted
    model = run_model(seed=123)  # other initial weights: all must come from the checkpoint
    result = fit_stream(checkpointing_trainer(tmp_path), model, make_tensor_stream(3), ckpt_path=path / f"{name}.ckpt")
    torch.testing.assert_close(result.accuracy_matrix, expected.accuracy_matrix)
    torch.testing.assert_close(result.initial_accuracy, expected.initial_accuracy)
    for a, b in zip(params, model.parameters()):
        torch.testing.assert_close(a, b.detach())


def test_refusals(uninterrupted: Any, tmp_path: Path) -> None:
    _, _, path = uninterrupted
    with pytest.raises(TypeError, match=r"`model`: expected a lightning_cl.ContinualModule, got TinyClassifier. Wrap"):
        fit_stream(quiet_trainer(), TinyClassifier(), make_tensor_stream(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`datamodule`"):
        fit_stream(quiet_trainer(), run_model(), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ddp_spawn / ddp_fork / ddp_notebook"):
        fit_stream(L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn"), run_model(), make_tensor_stream(3))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        fit_stream(quiet_trainer(), run_model(), make_tensor_stream(3), ckpt_path=tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.ckpt' is not a readable checkpoint"):
        fit_stream(quiet_trainer(), run_model(), make_tensor_stream(3), ckpt_path=tmp_path / "junk.ckpt")
    with pytest.raises(ValueError, match=r"another stream: its `num_experiences` is 3, this StreamDataModule has 2"):
        fit_stream(quiet_trainer(), run_model(), make_tensor_stream(2), ckpt_path=path / "after_exp0.ckpt")
    model, trainer = run_model(), quiet_trainer()
    trainer.fit(model, datamodule=make_tensor_stream(3))
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    with pytest.raises(ValueError, match="has no optimizer_states and no callbacks: it was saved weights-only"):
        fit_stream(quiet_trainer(), run_model(), make_tensor_stream(3), ckpt_path=tmp_path / "weights.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="holds no stream position"):
        fit_stream(quiet_trainer(), run_model(), make_tensor_stream(3), ckpt_path=tmp_path / "foreign.ckpt")


def test_a_fit_that_trains_nothing_stops_the_stream() -> None:
    with pytest.raises(RuntimeError, match=r"ended without finishing experience 0 \(0 optimizer steps"):
        fit_stream(quiet_trainer(limit_train_batches=0), run_model(), make_tensor_stream(3), evaluate_initial=False)


def test_a_one_experience_stream() -> None:
    result = fit_stream(quiet_trainer(max_epochs=3), run_model(), make_tensor_stream(1))
    assert result.accuracy_matrix.shape == (1, 1) and result.forgetting == 0.0
