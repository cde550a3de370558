"""StreamProgressBar: the experience in the bar descriptions."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.loggers import StreamProgressBar, experience_description
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


class Descriptions(L.Callback):
    """Reads what the bars show, during training and testing."""

    def __init__(self) -> None:
        self.train: list[str] = []
        self.epochs: list[int] = []
        self.test: list[str] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.epochs.append(trainer.current_epoch)
        self.train.append(trainer.progress_bar_callback.train_progress_bar.desc)  # type: ignore[union-attr]

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.test.append(trainer.progress_bar_callback.test_progress_bar.desc)  # type: ignore[union-attr]


def run(**trainer_kwargs: Any) -> Descriptions:
    seen = Descriptions()
    trainer = quiet_trainer(enable_progress_bar=True, callbacks=[StreamProgressBar(), seen], **trainer_kwargs)
    fit_stream(trainer, ContinualModule(TinyClassifier(in_features=8, num_classes=6)), make_tensor_stream())
    return seen


def test_training_bar_shows_the_experience_and_the_epoch_within_it() -> None:
    seen = run(max_epochs=2)
    # 3 experiences x 2 epochs x 3 batches
    assert sorted(set(seen.train)) == [f"experience {e}/3, epoch {k}/2: " for e in (1, 2, 3) for k in (1, 2)]
    assert seen.train[6:12] == ["experience 2/3, epoch 1/2: "] * 3 + ["experience 2/3, epoch 2/2: "] * 3


def test_test_bar_shows_after_which_experience() -> None:
    seen = run()
    assert sorted({d.split(" DataLoader")[0] for d in seen.test}) == [
        "Testing after experience 1/3",
        "Testing after experience 2/3",
        "Testing after experience 3/3",
        "Testing the untrained model",
    ]


def test_step_budget_shows_the_global_epoch() -> None:
    seen = run(max_epochs=-1, max_steps=4)
    assert len(seen.train) == 12 and seen.epochs[4] > 0  # the second fit goes on from the first one's epoch
    assert seen.train[4:8] == [f"experience 2/3, epoch {e}: " for e in seen.epochs[4:8]]


def test_no_stream_no_description() -> None:
    trainer = quiet_trainer()
    assert experience_description(trainer) is None
    bar = StreamProgressBar()
    assert bar.test_description == "Testing"


@pytest.mark.parametrize("refresh_rate", [0, 5])
def test_options_reach_lightnings_bar(refresh_rate: int) -> None:
    bar = StreamProgressBar(refresh_rate=refresh_rate, leave=True)
    assert bar.refresh_rate == refresh_rate and bar._leave
