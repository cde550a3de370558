"""StreamProgressBar: Lightning's tqdm progress bar, showing the experience of the stream."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_cl.core.datamodule import StreamDataModule


def _stream(trainer: L.Trainer | None) -> StreamDataModule | None:
    dm = None if trainer is None else getattr(trainer, "datamodule", None)
    return dm if isinstance(dm, StreamDataModule) else None


def experience_description(trainer: L.Trainer) -> str | None:
    """``"experience 3/5, epoch 1/2"`` for the running ``fit`` (1-based); None outside a stream.

    The epoch is counted within the experience when the budget is ``max_epochs``; with
    ``max_epochs=-1`` (a ``max_steps`` budget) it is the Trainer's global epoch.
    """
    dm = _stream(trainer)
    if dm is None:
        return None
    experience = min(dm.current_experience, dm.num_experiences - 1) + 1
    text = f"experience {experience}/{dm.num_experiences}"
    epochs, target = dm._epochs_per_experience, dm._target_epoch
    if epochs is not None and epochs > 0 and target != -1:
        return f"{text}, epoch {trainer.current_epoch - (target - epochs) + 1}/{epochs}"
    return f"{text}, epoch {trainer.current_epoch}"


class StreamProgressBar(TQDMProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.TQDMProgressBar`, aware of the stream.

    The training bar reads ``experience 3/5, epoch 1/2`` (both 1-based, the epoch counted within
    the experience) instead of ``Epoch 12``; the test bar reads ``Testing after experience 3/5``
    (``Testing the untrained model`` for the initial evaluation). Add it to the Trainer's
    callbacks; Lightning then uses it instead of its default bar. Only rank 0 shows it, as with
    every Lightning progress bar. The end-of-stream summary table is printed by
    :class:`~lightning_cl.loggers.StreamReport`.

    Args:
        refresh_rate: update the bars every ``refresh_rate`` batches (0 disables them).
        process_position: the bars' line offset, for several trainers in one terminal.
        leave: keep a finished epoch's bar on screen.

    Example:
        >>> trainer = L.Trainer(callbacks=[StreamProgressBar()], logger=False)
        >>> isinstance(trainer.progress_bar_callback, StreamProgressBar)
        True
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        description = experience_description(trainer)
        if description is not None:
            self.train_progress_bar.set_description(description)

    @property
    def test_description(self) -> str:
        dm = _stream(self._trainer)
        if dm is None:
            return super().test_description
        if dm.completed_experiences == 0:
            return "Testing the untrained model"
        return f"Testing after experience {dm.completed_experiences}/{dm.num_experiences}"
