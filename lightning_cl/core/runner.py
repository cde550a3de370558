"""fit_stream: the whole protocol — (initial test), then fit + test for each experience."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from lightning_cl.core.callback import continual_callbacks
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.module import ContinualModule
from lightning_cl.core.result import StreamResult

# strategies whose processes each hold a shard of the parameters (DDP replicates them)
_SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


def _check_arguments(trainer: Any, model: Any, datamodule: Any) -> None:
    if not isinstance(trainer, L.Trainer):
        raise TypeError(f"`trainer`: expected a lightning.Trainer, got {type(trainer).__name__}.")
    if not isinstance(model, ContinualModule):
        hint = " Wrap it: ContinualModule(model)." if isinstance(model, L.LightningModule) else ""
        raise TypeError(f"`model`: expected a lightning_cl.ContinualModule, got {type(model).__name__}.{hint}")
    if not isinstance(datamodule, StreamDataModule):
        raise TypeError(f"`datamodule`: expected a lightning_cl.StreamDataModule, got {type(datamodule).__name__}.")
    if isinstance(trainer.strategy, _SHARDED_STRATEGIES):
        raise ValueError(
            f"`trainer`: strategy {type(trainer.strategy).__name__} shards the parameters across the processes, "
            "but the CL methods read and write whole parameters by name (importances and anchors, copies of the "
            "old model, gradient projections, grown heads): FSDP, DeepSpeed and model-parallel strategies are not "
            "supported. Use strategy='ddp' (one process per device, on one or several nodes), or one device."
        )
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ValueError(
            f"`trainer`: strategy {type(trainer.strategy).__name__} starts its processes per call "
            "(ddp_spawn / ddp_fork / ddp_notebook): a second `fit` is impossible there and the CL "
            "state of the workers would be lost. Use strategy='ddp' from a script (Lightning starts the "
            "other processes, or torchrun / SLURM do), or train on one device in a notebook."
        )


def _peek_stream_state(ckpt_path: str | Path, trainer: L.Trainer, datamodule: StreamDataModule) -> dict[str, Any]:
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"`ckpt_path`: no checkpoint file at {str(path)!r}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:  # not a pickled object: a damaged or foreign file
            raise ValueError(f"`ckpt_path`: {str(path)!r} is not a readable checkpoint ({error}).") from error
        # Lightning reads a checkpoint to resume from weights-only too: it would fail the same way
        raise ValueError(
            f"`ckpt_path`: {str(path)!r} holds a Python object ({found.group(1)}) that a weights-only load "
            "refuses: a resumable checkpoint holds tensors and primitives only. Is a hyperparameter of the model "
            "or the datamodule, or a callback's state, such an object?"
        ) from error
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
    continual = checkpoint.get("lightning_cl")
    if not isinstance(continual, dict):
        raise ValueError(
            f"`ckpt_path`: {str(path)!r} holds no 'lightning_cl' state (the rows of the accuracy matrix, the "
            "CL methods, the random generators): it was not written by a ContinualModule."
        )
    _check_methods(path, continual.get("methods"), [c.state_key for c in continual_callbacks(trainer)])
    return state


def _check_methods(path: Path, saved: list[str] | None, current: list[str]) -> None:
    """Refuse a checkpoint of other CL methods (Lightning ignores a callback state nobody claims)."""
    if saved is None:
        return  # written before the methods were recorded
    if saved == current:
        return
    missing = [key for key in saved if key not in current]
    extra = [key for key in current if key not in saved]
    if missing or extra:
        detail = "; ".join(
            part
            for part in (
                f"in the checkpoint, not in the trainer: {missing}" if missing else "",
                f"in the trainer, not in the checkpoint: {extra}" if extra else "",
            )
            if part
        )
    else:
        detail = f"the same methods in another order: checkpoint {saved}, trainer {current}"
    raise ValueError(
        f"`ckpt_path`: {str(path)!r} was written by a run with other CL methods ({detail}). Resume with the "
        "callbacks of that run: the same classes, arguments and order."
    )


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
            to resume from; the result then includes the rows of R evaluated before it. With the
            same Trainer, methods and model, the resumed run ends as the uninterrupted one would
            have (on CPU with ``deterministic=True``, to the last bit in the tests: the model, the
            optimizer, the stream position, the methods' states and the random generators are
            all restored).

    Returns:
        The :class:`StreamResult` of the stream.

    Raises:
        TypeError: if an argument has the wrong type.
        FileNotFoundError: if ``ckpt_path`` is not a file.
        ValueError: for a spawn-based strategy, or a checkpoint that cannot resume this run: unreadable
            (corrupt, truncated), saved weights-only, of another stream (number of experiences,
            class order) or of other CL methods (the trainer's ContinualCallbacks, by ``state_key``).
    """
    _check_arguments(trainer, model, datamodule)
    if ckpt_path is not None:
        # Lightning runs `setup` before it restores a checkpoint, so the stream position must
        # be known before `fit` is called.
        datamodule.load_state_dict(_peek_stream_state(ckpt_path, trainer, datamodule))
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
