"""ContinualModule: wraps any LightningModule and runs it over a stream of experiences."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping
from pathlib import PurePath
from types import MethodType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from lightning_cl.core.callback import TrainingStep, continual_callbacks
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import DynamicModule, forward_logits, forward_takes_task_labels, probing, sample_batch
from lightning_cl.core.experience import Experience
from lightning_cl.core.result import StreamResult
from lightning_cl.metrics import functional as F
from lightning_cl.metrics.stream_accuracy import StreamAccuracy

# Hooks Lightning calls on the outer module only. ContinualModule forwards each one the user's
# module overrides (keeping `self.log` working). The forwarders are set on the instance, and only
# for overridden hooks: Lightning decides by `is_overridden` whether to call a hook at all, or
# whose (the datamodule's batch-transfer hooks lose to an overriding module's).
_FORWARDED_HOOKS = (
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_model_zero_grad",
    "on_validation_model_eval",
    "on_validation_model_train",
    "on_test_start",
    "on_test_end",
    "on_test_epoch_start",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_test_model_eval",
    "on_test_model_train",
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_predict_model_eval",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
    "configure_model",
    "prepare_data",
    "optimizer_step",
    "optimizer_zero_grad",
    "lr_scheduler_step",
    "configure_gradient_clipping",
    "backward",
    "validation_step",
    "predict_step",
)
# Hooks ContinualModule implements itself; each also calls the user's override.
_OWN_HOOKS = (
    "setup",
    "on_fit_start",
    "teardown",
    "on_train_start",
    "on_train_end",
    "on_fit_end",
    "on_train_epoch_end",
    "on_test_epoch_end",
    "on_save_checkpoint",
    "on_load_checkpoint",
)


def _forwarder(name: str) -> Callable[..., Any]:
    def hook(self: ContinualModule, *args: Any, **kwargs: Any) -> Any:
        return self._call_user(name, *args, **kwargs)

    hook.__name__ = name
    return hook


class ContinualModule(L.LightningModule):
    """Runs an existing LightningModule over a stream, unchanged.

    The wrapped module keeps its ``training_step``, ``self.log`` calls, ``configure_optimizers``
    (called again at every experience, so each one gets a fresh optimizer), hooks and checkpoint
    keys. ContinualModule adds:

    * the stream position: each ``trainer.fit`` trains the datamodule's next experience for
      ``max_epochs`` epochs (or ``max_steps`` steps) of the Trainer, with ONE Trainer;
    * the CL methods' contributions (:class:`~lightning_cl.core.callback.ContinualCallback`):
      batches, loss replacement and loss terms; per-experience reset of EarlyStopping and
      ModelCheckpoint;
    * stream evaluation: ``trainer.test`` fills row ``i`` of the accuracy matrix with a
      :class:`~lightning_cl.metrics.StreamAccuracy` and logs ``test/acc_exp{j}`` and
      ``stream/*``;
    * ``train/loss`` and ``train/<name>_loss``, accumulated on the device and logged per epoch.

    Its ``state_dict`` is the wrapped module's, key for key, and its checkpoints carry the wrapped
    module's hyperparameters, so ``MyModule.load_from_checkpoint(path)`` loads a checkpoint of a
    wrapped run into the bare module. They also carry (under ``"lightning_cl"``, tensors and
    primitives only) the rows of the accuracy matrix, the ``state_key`` of every CL method and the
    states of the global random generators (torch, CUDA, NumPy, Python), which a fit resumed from
    the checkpoint continues (rank 0's on every rank: seed all ranks alike).

    Stream evaluation needs ``forward`` to return logits ``[B, C]``. A module whose ``forward``
    takes two arguments (or one named ``task_labels``) gets the task labels of the batch too.
    The user's ``test_step`` is not called: the stream evaluation takes its place.

    Args:
        module: the LightningModule to train over the stream.
        log_loss_on_step: also log ``train/loss`` every step (one ``self.log`` per step is a
            measurable cost on small models, so the default is per epoch only).
        keep_optimizer_state: carry the optimizer state (e.g. Adam moments) of every parameter
            whose name and shape are unchanged into the next experience's new optimizer; new or
            grown parameters start fresh. By default each experience starts from a fresh state.

    Raises:
        TypeError: if ``module`` is not a LightningModule or defines no ``forward``.
    """

    def __init__(
        self, module: L.LightningModule, *, log_loss_on_step: bool = False, keep_optimizer_state: bool = False
    ) -> None:
        super().__init__()
        if isinstance(module, ContinualModule):
            raise TypeError("`module`: expected the user's LightningModule, got a ContinualModule (wrap once).")
        if not isinstance(module, L.LightningModule):
            raise TypeError(
                f"`module`: expected a lightning.LightningModule, got {type(module).__name__}. "
                "Wrap a plain nn.Module in a LightningModule with a training_step first."
            )
        if type(module).forward is L.LightningModule.forward:
            raise TypeError(
                f"`module`: {type(module).__name__} defines no `forward`; stream evaluation needs "
                "`forward(x)` (or `forward(x, task_labels)`) to return logits."
            )
        if not is_overridden("training_step", module):
            raise TypeError(f"`module`: {type(module).__name__} defines no `training_step`.")
        self.module = module
        self.log_loss_on_step = log_loss_on_step
        self.keep_optimizer_state = keep_optimizer_state
        self._optimizer_state: dict[str, dict[str, Any]] = {}
        self._user_hooks = {name for name in _FORWARDED_HOOKS + _OWN_HOOKS if is_overridden(name, module)}
        for name in self._user_hooks.intersection(_FORWARDED_HOOKS) - set(vars(ContinualModule)):
            self.__dict__[name] = MethodType(_forwarder(name), self)
        self._takes_task_labels = forward_takes_task_labels(module)
        self.stream_accuracy: StreamAccuracy | None = None
        self._rows: dict[int, Tensor] = {}
        self._initial: Tensor | None = None
        self._fit_seconds: dict[int, float] = {}
        self._fit_started = 0.0
        self._fit_index: int | None = None
        self._experience: Experience | None = None
        self._loss_sums: dict[str, Tensor] = {}
        self._loss_steps = 0
        self._output_checked: set[tuple[str, int]] = set()
        # (global step, random generators' states) of the checkpoint the running fit resumed from
        self._resumed_from: tuple[int, dict[str, Any]] | None = None

    # ------------------------------------------------------------------------------ plumbing
    def _call_user(self, name: str, *args: Any, **kwargs: Any) -> Any:
        inner = self.module
        previous = inner._current_fx_name
        # the wrapped module's self.log needs the hook name Lightning set on the outer module
        inner._current_fx_name = self._current_fx_name
        try:
            return getattr(inner, name)(*args, **kwargs)
        finally:
            inner._current_fx_name = previous

    @property
    def automatic_optimization(self) -> bool:  # type: ignore[override]
        return self.module.automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self.module.automatic_optimization = value

    @property
    def strict_loading(self) -> bool:  # type: ignore[override]
        return self.module.strict_loading

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self.module.strict_loading = value

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's ``state_dict``, with its own keys (no ``module.`` prefix)."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a ``state_dict`` of the wrapped module (a checkpoint of either the wrapped or bare run)."""
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def datamodule(self) -> StreamDataModule:
        """The trainer's :class:`StreamDataModule` (a clear error when there is none)."""
        dm = None if self._trainer is None else self.trainer.datamodule  # type: ignore[attr-defined]
        if not isinstance(dm, StreamDataModule):
            got = "no datamodule" if dm is None else type(dm).__name__
            raise TypeError(
                "ContinualModule runs over a stream: call trainer.fit/test(model, datamodule=dm) with "
                f"a lightning_cl.StreamDataModule (e.g. from lightning_cl.benchmarks), got {got}."
            )
        return dm

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def predict_logits(self, batch: Any) -> Tensor:
        """Logits of an ``(x, y[, t])`` batch, passing task labels to a ``forward`` that takes them."""
        return forward_logits(self.module, batch, self._takes_task_labels)

    def _check_outputs(self, num_outputs: int, experience: Experience, stream: str) -> None:
        key = (stream, experience.index)
        if key in self._output_checked:
            return
        top = max(experience.classes_in_this_experience)
        if top >= num_outputs:
            raise ValueError(
                f"{type(self.module).__name__} has {num_outputs} outputs but {stream} experience "
                f"{experience.index} holds class id {top} (classes {list(experience.classes_in_this_experience)}); "
                f"the model needs at least {top + 1} outputs (num_classes of the datamodule: "
                f"{self.datamodule.num_classes})."
            )
        self._output_checked.add(key)

    # ---------------------------------------------------------------------- stream position
    def setup(self, stage: str) -> None:
        if "setup" in self._user_hooks:
            self._call_user("setup", stage)
        if stage not in ("fit", "test"):
            return  # validate / predict on any data: nothing of the stream is involved
        dm = self.datamodule
        num_test = len(dm.test_stream)
        if self.stream_accuracy is None or self.stream_accuracy.num_experiences != num_test:
            self.stream_accuracy = StreamAccuracy(num_test)
        if stage == "test":
            # listed first: adaptation may add modules (heads, columns)
            for layer in [m for m in self.module.modules() if isinstance(m, DynamicModule)]:
                for test_experience in dm.test_stream:
                    layer.eval_adaptation(test_experience)
        if stage != "fit":
            return
        experience, starting = dm._begin_fit(self.trainer)
        self._experience = experience
        self._fit_index = None if experience is None else experience.index
        self._fit_started = time.perf_counter()
        if starting and experience is not None:
            self._reset_monitors()
            for layer in [m for m in self.module.modules() if isinstance(m, DynamicModule)]:
                layer.adaptation(experience)
            if getattr(dm, "access_task_boundaries", True):
                for callback in continual_callbacks(self.trainer):
                    callback.on_experience_start(self.trainer, self, experience)

    def _reset_monitors(self) -> None:
        # "best so far" of one experience means nothing for the next (another data distribution)
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, EarlyStopping):
                callback.wait_count = 0
                callback.stopped_epoch = 0
                callback.best_score = torch.tensor(torch.inf if callback.monitor_op == torch.lt else -torch.inf)
            elif isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
                callback.best_k_models = {}
                callback.kth_best_model_path = ""
                callback.best_model_score = None
                callback.best_model_path = ""
                callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)

    def on_fit_start(self) -> None:
        if self.keep_optimizer_state and self._optimizer_state:
            self._restore_optimizer_state()
        if "on_fit_start" in self._user_hooks:
            self._call_user("on_fit_start")

    def _parameters_by_optimizer(self) -> list[tuple[Any, dict[str, Tensor]]]:
        names = {id(p): name for name, p in self.module.named_parameters()}
        result = []
        for optimizer in self.trainer.optimizers:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            result.append((optimizer, {names[id(p)]: p for p in params if id(p) in names}))
        return result

    def _save_optimizer_state(self) -> None:
        saved: dict[str, dict[str, Any]] = {}
        for optimizer, params in self._parameters_by_optimizer():
            for name, p in params.items():
                if p in optimizer.state:
                    saved[name] = {
                        k: v.detach().cpu().clone() if isinstance(v, Tensor) else v
                        for k, v in optimizer.state[p].items()
                    }
        self._optimizer_state = saved

    def _restore_optimizer_state(self) -> None:
        for optimizer, params in self._parameters_by_optimizer():
            for name, p in params.items():
                state = self._optimizer_state.get(name)
                # a grown parameter has other moments' shapes: it starts fresh
                if state is None or any(
                    isinstance(v, Tensor) and v.dim() and v.shape != p.shape for v in state.values()
                ):
                    continue
                optimizer.state[p] = {
                    k: copy.deepcopy(v).to(p.device) if isinstance(v, Tensor) else v for k, v in state.items()
                }

    def on_train_start(self) -> None:
        # after Lightning restored a checkpoint's loops: the stream's step limit applies again
        self.datamodule._release_step_limit(self.trainer)
        experience = self._experience
        if experience is not None:
            self._check_training_outputs(experience)
            _check_sharded_training(self.trainer)
        if "on_train_start" in self._user_hooks:
            self._call_user("on_train_start")

    def _check_training_outputs(self, experience: Experience) -> None:
        with probing(self.module):  # one sample: keep BatchNorm statistics untouched
            num_outputs = self.predict_logits(sample_batch(experience.dataset, self.device)).shape[-1]
        self._check_outputs(num_outputs, experience, "train")

    def on_train_end(self) -> None:
        if self.keep_optimizer_state:
            self._save_optimizer_state()
        self._sync_buffers()
        self._end_experience()
        if "on_train_end" in self._user_hooks:
            self._call_user("on_train_end")

    def _sync_buffers(self) -> None:
        # DDP broadcasts buffers (BatchNorm statistics) from rank 0 before each step, so after the
        # last step every rank holds its own: give all rank 0's (the checkpoint's) before the CL
        # methods read the model (stored logits, herding features) and before the test pass
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            for buffer in self.module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _end_experience(self) -> None:
        dm = self.datamodule
        experience = self._experience
        if experience is None or not dm._active:
            return
        # a boundary-free stream hides where experiences end from the CL methods
        if getattr(dm, "access_task_boundaries", True):
            for callback in continual_callbacks(self.trainer):
                callback.on_experience_end(self.trainer, self, experience)
        dm._end_experience()
        self._experience = None

    def on_fit_end(self) -> None:
        dm = self.datamodule
        trainer = self.trainer
        if self._resumed_from is not None:
            step, rng = self._resumed_from
            self._resumed_from = None
            if trainer.global_step == step:
                # a fit that restored a checkpoint and trained nothing (written at an experience's
                # end): undo the random draws Lightning made since (data iterators), and let the
                # next fit start as any fit, as Lightning would after a training step
                _set_rng_state(rng)
                _forget_resume(trainer.fit_loop)
        budget_spent = (dm._target_epoch != -1 and trainer.current_epoch >= dm._target_epoch) or (
            dm._target_step != -1 and trainer.global_step >= dm._target_step
        )
        if self._experience is not None and budget_spent:
            # a fit that only restored a checkpoint written after the last epoch (or step) of an
            # experience: training is over, but on_train_end never ran; the optimizer is the
            # restored one, whose state the next experience may keep
            if self.keep_optimizer_state:
                self._save_optimizer_state()
            self._end_experience()
        if self._fit_index is not None:
            elapsed = time.perf_counter() - self._fit_started
            self._fit_seconds[self._fit_index] = self._fit_seconds.get(self._fit_index, 0.0) + elapsed
        if "on_fit_end" in self._user_hooks:
            self._call_user("on_fit_end")

    # ------------------------------------------------------------------------------ training
    def configure_optimizers(self) -> Any:
        return self._call_user("configure_optimizers")

    def configure_callbacks(self) -> Any:
        return self._call_user("configure_callbacks")

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        keys = self.datamodule._joint_keys
        if keys:
            current, extra = batch["current"], {k: batch[k] for k in keys}
        else:
            current, extra = batch, {}
        callbacks = continual_callbacks(self.trainer)
        for callback in callbacks:
            current = callback.prepare_batch(self, current, extra)
        output = self._call_user("training_step", current, batch_idx)
        if output is None:  # the user skipped this batch
            return None
        if isinstance(output, Tensor):
            loss = output
        elif isinstance(output, Mapping) and "loss" in output:
            loss = output["loss"]
        else:
            raise TypeError(
                f"{type(self.module).__name__}.training_step: expected a loss tensor or a dict with "
                f"'loss', got {type(output).__name__}."
            )
        if not callbacks:
            self._accumulate("loss", loss)
            return output
        if not self.automatic_optimization:
            raise RuntimeError(
                "CL callbacks change the loss, which a module with manual optimization computes and "
                f"backpropagates itself; remove {[type(c).__name__ for c in callbacks]} or use automatic optimization."
            )
        step = TrainingStep(self, current, extra, output, loss, batch_idx)
        replaced_by = None
        for callback in callbacks:
            replacement = callback.task_loss(step)
            if replacement is not None:
                if replaced_by is not None:
                    raise RuntimeError(
                        f"Both {replaced_by} and {type(callback).__name__} replace the task loss; "
                        "at most one CL method may do that."
                    )
                replaced_by = type(callback).__name__
                step.loss = replacement
        total = step.loss
        for callback in callbacks:
            for name, term in callback.loss_terms(step).items():
                self._accumulate(f"{name}_loss", term)
                total = total + term
        self._accumulate("loss", total)
        if isinstance(output, Mapping):
            return {**output, "loss": total}
        return total

    def _accumulate(self, name: str, value: Tensor) -> None:
        value = value.detach()
        # summed on the device: no host sync per step; logged once per epoch
        if name in self._loss_sums:
            self._loss_sums[name] += value
        else:
            self._loss_sums[name] = value.clone().float()
        if name == "loss":
            self._loss_steps += 1
            if self.log_loss_on_step:
                self.log("train/loss_step", value, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        steps = max(self._loss_steps, 1)
        for name, total in self._loss_sums.items():
            self.log(f"train/{name}", total / steps, on_step=False, on_epoch=True, sync_dist=True)
        self._loss_sums = {}
        self._loss_steps = 0
        if "on_train_epoch_end" in self._user_hooks:
            self._call_user("on_train_epoch_end")

    # ---------------------------------------------------------------------------- evaluation
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        assert self.stream_accuracy is not None  # for mypy: created in setup
        logits = self.predict_logits(batch)
        replaced_by = None
        for callback in continual_callbacks(self.trainer):
            scores = callback.eval_logits(self, batch, logits)
            if scores is not None:
                if replaced_by is not None:
                    raise RuntimeError(
                        f"Both {replaced_by} and {type(callback).__name__} replace the evaluation logits; "
                        "at most one CL method may do that."
                    )
                replaced_by, logits = type(callback).__name__, scores
        experience = self.datamodule.test_stream[dataloader_idx]
        self._check_outputs(logits.shape[-1], experience, "test")
        self.stream_accuracy.update(logits, batch[1], dataloader_idx)
        # callbacks' on_test_batch_end receives this (Lightning keeps no step outputs)
        return {"logits": logits}

    def on_test_epoch_end(self) -> None:
        assert self.stream_accuracy is not None  # for mypy: created in setup
        # collective: every rank calls it; torchmetrics squeezes a one-experience result to a scalar
        accuracy = self.stream_accuracy.compute().cpu().reshape(-1)
        self.stream_accuracy.reset()
        row = self.datamodule.completed_experiences - 1
        if self.datamodule._active:
            # weights from inside experience k (a checkpoint written at one of its epoch ends): they
            # have trained on k, so they are row k, not k - 1, whose row the checkpoint already holds
            row += 1
        if row < 0:
            self._initial = accuracy
        else:
            self._rows[row] = accuracy
        for j, value in enumerate(accuracy.tolist()):
            self.log(f"test/acc_exp{j}", value)
        if row >= 0:
            for name, value in self._stream_metrics(self.accuracy_matrix).items():
                self.log(f"stream/{name}", value)
        if "on_test_epoch_end" in self._user_hooks:
            self._call_user("on_test_epoch_end")

    def _stream_metrics(self, R: Tensor) -> dict[str, float]:
        metrics = {
            "average_accuracy": F.average_accuracy(R),
            "forgetting": F.forgetting(R),
            "backward_transfer": F.backward_transfer(R),
        }
        if self._initial is not None:
            metrics["forward_transfer"] = F.forward_transfer(R, self._initial)
        return metrics

    @property
    def accuracy_matrix(self) -> Tensor:
        """Rows of R evaluated so far, ``[rows, num_test_experiences]`` (NaN for a row never tested)."""
        if not self._rows:
            return torch.empty(0, 0, dtype=torch.float64)
        columns = len(next(iter(self._rows.values())))
        R = torch.full((max(self._rows) + 1, columns), float("nan"), dtype=torch.float64)
        for i, row in self._rows.items():
            R[i] = row
        return R

    @property
    def stream_result(self) -> StreamResult:
        """The accuracy matrix and stream metrics of every evaluation so far.

        Raises:
            RuntimeError: if the test stream was never evaluated after an experience.
        """
        if not self._rows:
            raise RuntimeError(
                "No stream evaluation yet: run trainer.test(model, datamodule=dm) after a fit "
                "(fit_stream does it for you)."
            )
        R = self.accuracy_matrix
        metrics = self._stream_metrics(R)
        return StreamResult(
            accuracy_matrix=R,
            average_accuracy=metrics["average_accuracy"],
            forgetting=metrics["forgetting"],
            backward_transfer=metrics["backward_transfer"],
            forward_transfer=metrics.get("forward_transfer"),
            initial_accuracy=self._initial,
            fit_seconds=[self._fit_seconds.get(i, 0.0) for i in range(R.shape[0])],
        )

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "on_save_checkpoint" in self._user_hooks:
            self._call_user("on_save_checkpoint", checkpoint)
        if self.module.hparams:
            # so that the bare module's load_from_checkpoint rebuilds it from this file
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_NAME] = getattr(self.module, "_hparams_name", None)
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = dict(self.module.hparams)
        # a path among the hyperparameters (a datamodule's `root`) would make the file unreadable
        # by a weights-only load, which is how Lightning reads a checkpoint to resume from
        for key in (self.CHECKPOINT_HYPER_PARAMS_KEY, L.LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY):
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key] = _paths_as_strings(checkpoint[key])
        checkpoint["lightning_cl"] = {
            "rows": {i: row.clone() for i, row in self._rows.items()},
            "initial": None if self._initial is None else self._initial.clone(),
            "fit_seconds": dict(self._fit_seconds),
            "optimizer_state": self._optimizer_state,
            # the CL methods of this run (fit_stream refuses to resume with others: Lightning
            # would silently ignore a missing method's state) and the global random generators
            # (dropout, random augmentations), which a resumed run continues from here
            "methods": [c.state_key for c in continual_callbacks(self._trainer)],
            "rng": _rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lightning_cl")
        if state is not None:
            self._rows = {int(i): row for i, row in state.get("rows", {}).items()}
            self._initial = state.get("initial")
            self._fit_seconds = {int(i): float(s) for i, s in state.get("fit_seconds", {}).items()}
            self._optimizer_state = state.get("optimizer_state", {})
            trainer = self._trainer
            if state.get("rng") is not None and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
                # resuming a fit: continue the random streams where the checkpoint left them
                _set_rng_state(state["rng"])
                self._resumed_from = (int(checkpoint.get("global_step", -1)), state["rng"])
        if "on_load_checkpoint" in self._user_hooks:
            self._call_user("on_load_checkpoint", checkpoint)

    def teardown(self, stage: str) -> None:
        if "teardown" in self._user_hooks:
            self._call_user("teardown", stage)


def _paths_as_strings(value: Any) -> Any:
    """``value`` with every ``pathlib`` path in it (in dicts, lists, tuples) replaced by its string."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {k: _paths_as_strings(v) for k, v in value.items()}
    if isinstance(value, list) or type(value) is tuple:
        return type(value)(_paths_as_strings(v) for v in value)
    return value


def _rng_state() -> dict[str, Any]:
    """The global random generators' states (torch, CUDA, NumPy, Python) as tensors and primitives."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # for mypy: the legacy form is ("MT19937", key, pos, has_gauss, gauss)
    _, key, pos, has_gauss, gauss = legacy
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global random generators from :func:`_rng_state` (the generators it lacks are left as they are)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    numpy_state = state.get("numpy")
    if numpy_state is not None:
        key = numpy_state["key"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", key, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    python_state = state.get("python")
    if python_state is not None:
        internal = tuple(int(v) for v in python_state["internal"].tolist())
        random.setstate((python_state["version"], internal, python_state["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _check_sharded_training(trainer: L.Trainer) -> None:
    """Refuse, under several processes, a training loader that every process would draw alike.

    Lightning splits a loader across the processes by putting a DistributedSampler in it; with
    ``use_distributed_sampler=False``, or with a sampler that is not one and does not shard itself
    (``num_replicas`` and ``rank`` attributes, as torch's), every process would train on the same
    batches. Iterable datasets are left to the user (they shard themselves or not).
    """
    world = trainer.world_size
    if world == 1:
        return
    for name, loader in _loaders(trainer.train_dataloader, "train"):
        if isinstance(loader.dataset, IterableDataset):
            continue
        batch_sampler = loader.batch_sampler
        candidates = [loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)]
        if any(
            isinstance(s, DistributedSampler)
            or (getattr(s, "num_replicas", None) == world and getattr(s, "rank", None) == trainer.global_rank)
            for s in candidates
        ):
            continue
        drawn = type(loader.sampler).__name__
        if batch_sampler is not None and type(batch_sampler).__name__ != "BatchSampler":
            inner = getattr(batch_sampler, "sampler", None)
            drawn = f"the batch sampler {type(batch_sampler).__name__}"
            drawn += "" if inner is None else f" over {type(inner).__name__}"
        dm = trainer.datamodule  # type: ignore[attr-defined]
        raise ValueError(
            f"`{type(dm).__name__}.train_dataloader`: the training loader {name!r} draws with {drawn}, which is not "
            f"split across the {world} processes: every process would train on the same batches. Keep "
            "Trainer(use_distributed_sampler=True) with a plain sampler, which Lightning splits, or give a "
            "sampler or batch sampler that splits itself (a DistributedSampler, or one with `num_replicas` and "
            "`rank` attributes, as StreamDataModule(balance=...) does), or train on one process."
        )


def _loaders(iterables: Any, name: str) -> list[tuple[str, DataLoader]]:
    """The DataLoaders of a (nested) mapping or sequence of loaders, with their keys."""
    if isinstance(iterables, DataLoader):
        return [(name, iterables)]
    if isinstance(iterables, Mapping):
        return [pair for key, value in iterables.items() for pair in _loaders(value, str(key))]
    if isinstance(iterables, (list, tuple)):
        return [pair for i, value in enumerate(iterables) for pair in _loaders(value, f"{name}[{i}]")]
    return []


def _forget_resume(loop: Any) -> None:
    """Clear the "resuming" flags of Lightning's ``loop`` and its child loops.

    Lightning clears them after the first training step of a resumed fit; a fit that only restored
    a checkpoint keeps them, and the next fit would then create its data iterators once less
    (each creation draws from the global random generator).
    """
    pending, seen = [loop], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for name in ("_restarting", "_loaded_from_state_dict", "_resuming_from_checkpoint"):
            if hasattr(current, name):
                setattr(current, name, False)
        pending += [child for child in vars(current).values() if hasattr(child, "_resuming_from_checkpoint")]
