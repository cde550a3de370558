"""fit_stream: the whole protocol — (initial test), then fit + test for each experience."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.module import ContinualModule
from lightning_cl.core.result import StreamResult


def _check_arguments(trainer: Any, model: Any, datamodule: Any) -> None:
    if not isinstance(trainer, L.Trainer):
        raise TypeError(f"`trainer`: expected a lightning.Trainer, got {type(trainer).__name__}.")
    if not isinstance(model, ContinualModule):
        hint = " Wrap it: ContinualModule(model)." if isinstance(model, L.LightningModule) else ""
        raise TypeError(f"`model`: expected a lightning_cl.ContinualModule, got {type(model).__name__}.{hint}")
    if not isinstance(datamodule, StreamDataModule):
        raise TypeError(f"`datamodule`: expected a lightning_cl.StreamDataModule, got {type(datamodule).__name__}.")
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ValueError(
            f"`trainer`: strategy {type(trainer.strategy).__name__} starts its processes per call "
            "(ddp_spawn / ddp_fork / ddp_notebook): a second `fit` is impossible there and the CL "
            "state of the workers would be lost. Use strategy='ddp'."
        )


def _peek_stream_state(ckpt_path: str | Path, datamodule: StreamDataModule) -> dict[str, Any]:
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"`ckpt_path`: no checkpoint file at {str(path)!r}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"`ckpt_path`: {str(path)!r} is not a readable checkpoint ({error}).") from error
    state = checkpoint.get(type(datamodule).__qualname__) if isinstance(checkpoint, dict) else None
    missing = [key for key in ("optimizer_states", "callbacks") if key not in checkpoint]
    if state is not None and missing:
        raise ValueError(
            f"`ckpt_path`: {str(path)!r} has no {' and no '.join(missing)}: it was saved weights-only "
            "(save_weights_only=True), which cannot resume a stream. Use full checkpoints."
        )
    if state is None:
        raise ValueError(
            f"`ckpt_path`: {str(path)!r} holds no stream position ({type(datamodule).__qualname__} "
            "state): it was not written by a fit of this kind of stream, or was saved weights-only."
        )
    return state


def fit_stream(
    trainer: L.Trainer,
    model: ContinualModule,
    datamodule: StreamDataModule,
    *,
    evaluate_initial: bool = True,
    ckpt_path: str | Path | None = None,
) -> StreamResult:
    """Train ``model`` on every experience of ``datamodule`` with ONE trainer, testing after each.

    Equivalent to::

        trainer.test(model, datamodule=datamodule)        # if evaluate_initial
        for _ in range(datamodule.num_experiences):
            trainer.fit(model, datamodule=datamodule)
            trainer.test(model, datamodule=datamodule, verbose=False)

    Args:
        trainer: the Trainer; its ``max_epochs`` / ``max_steps`` is the budget of each experience.
        model: the wrapped module.
        datamodule: the stream.
        evaluate_initial: test the untrained model first (needed for forward transfer).
        ckpt_path: a Lightning checkpoint of this stream (any epoch end, or an experience end)
            to resume from; the result then includes the rows of R evaluated before it.

    Returns:
        The :class:`StreamResult` of the stream.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for a spawn-based strategy, or a checkpoint that is not of this stream.
    """
    _check_arguments(trainer, model, datamodule)
    if ckpt_path is not None:
        # Lightning runs `setup` before it restores a checkpoint, so the stream position must
        # be known before `fit` is called.
        datamodule.load_state_dict(_peek_stream_state(ckpt_path, datamodule))
        datamodule._restore_only = not datamodule._active
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        finally:
            datamodule._restore_only = False
        if datamodule.completed_experiences > 0 and (datamodule.completed_experiences - 1) not in model._rows:
            trainer.test(model, datamodule=datamodule, verbose=False)
    elif evaluate_initial and datamodule.completed_experiences == 0:
        trainer.test(model, datamodule=datamodule, verbose=False)
    while datamodule.current_experience < datamodule.num_experiences:
        experience, step = datamodule.current_experience, trainer.global_step
        trainer.fit(model, datamodule=datamodule)
        if datamodule.current_experience == experience:
            raise RuntimeError(
                f"`trainer.fit` ended without finishing experience {experience} ({trainer.global_step - step} "
                f"optimizer steps, trainer state {trainer.state.status.value}): interrupted, or no training "
                "batches (limit_train_batches=0?). Resume from a checkpoint with fit_stream(..., ckpt_path=...)."
            )
        trainer.test(model, datamodule=datamodule, verbose=False)
    return model.stream_result
