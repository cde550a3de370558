"""ContinualMetrics: the user-facing callback that selects continual-learning metrics by name."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_cl.core.dynamic import sample_batch
from lightning_cl.metrics import functional as F
from lightning_cl.metrics.flips import FlipCounts
from lightning_cl.metrics.stream_confusion import StreamConfusionMatrix
from lightning_cl.metrics.stream_loss import StreamLoss
from lightning_cl.metrics.stream_topk import StreamTopKAccuracy
from lightning_cl.metrics.system import system_metrics
from lightning_cl.metrics.training_counts import TrainingCounts

if TYPE_CHECKING:
    from lightning_cl.core.datamodule import StreamDataModule
    from lightning_cl.core.module import ContinualModule

_LOGITS_METRICS = {"minibatch_accuracy", "epoch_accuracy", "experience_accuracy"}
_LOSS_METRICS = {"minibatch_loss", "epoch_loss", "experience_loss"}
_CONFUSION_METRICS = {"class_accuracy", "confusion_matrix", "seen_classes_accuracy"}
_R_METRICS = ("average_accuracy", "forgetting", "backward_transfer", "forward_transfer")


# Values this callback logs are already reduced across processes (sum-reduced counts), so
# Lightning's advice to log them with sync_dist=True (one all-reduce per key) does not apply.
_SYNCED_KEYS = (
    r"test/(loss_exp|top\d+_acc_exp|acc_class)\d+|train/(acc|loss)_epoch|system/\w+"
    r"|stream/(accuracy|loss|top\d+_accuracy|seen_classes_accuracy|negative_flip_rate|positive_flip_rate)"
)
_SYNC_ADVICE = rf"It is recommended to use `self.log\('({_SYNCED_KEYS})', \.\.\., sync_dist=True\)`"


def _continual(pl_module: L.LightningModule) -> ContinualModule:
    # for mypy: ContinualMetrics.setup checked the type
    return pl_module  # type: ignore[return-value]


class ContinualMetrics(L.Callback):
    """Continual-learning metrics at every granularity, chosen by name and logged through Lightning.

    Add it to the Trainer that runs the stream (``Trainer(callbacks=[ContinualMetrics(...)])``)
    with a :class:`~lightning_cl.ContinualModule` and a :class:`~lightning_cl.StreamDataModule`.
    Every value goes to the Trainer's loggers (CSV, TensorBoard, W&B, ...) under the keys below,
    and the stream values are also kept in :attr:`results` (one dict per evaluation) and in the
    callback's ``state_dict`` (so a Lightning checkpoint carries them).

    =========================  ==============================================================  =========================
    name                       logged keys                                                     when
    =========================  ==============================================================  =========================
    ``minibatch_accuracy``     ``train/acc_step``                                              every training step
    ``minibatch_loss``         ``train/loss_step``                                             every training step
    ``epoch_accuracy``         ``train/acc_epoch``                                             every training epoch
    ``epoch_loss``             ``train/loss_epoch``                                            every training epoch
    ``experience_accuracy``    ``train/acc_experience``                                        end of each experience
    ``experience_loss``        ``train/loss_experience``                                       end of each experience
    ``experience_time``        ``experience/seconds``, ``experience/samples_per_second``       end of each experience
    ``stream_accuracy``        ``stream/accuracy`` (all test samples); ``test/acc_exp{j}``     every ``trainer.test``
                               is ContinualModule's, and kept in ``results``
    ``stream_loss``            ``test/loss_exp{j}``, ``stream/loss``                           every ``trainer.test``
    ``stream_topk_accuracy``   ``test/top{k}_acc_exp{j}``, ``stream/top{k}_accuracy``          every ``trainer.test``
    ``class_accuracy``         ``test/acc_class{c}`` (each class with test samples)            every ``trainer.test``
    ``confusion_matrix``       not logged: ``results[i]["confusion_matrix"]``, ``[T, C, C]``   every ``trainer.test``
    ``seen_classes_accuracy``  ``stream/seen_classes_accuracy``                                every test after training
    ``flip_rates``             ``stream/negative_flip_rate``, ``stream/positive_flip_rate``    every test but the first
                               (and ``results[i]["flip_counts"]``, ``[3, T]``)
    ``average_accuracy``       ``stream/<name>``: logged by ContinualModule, recorded          every test after training
                               in ``results`` by this callback
    ``forgetting``             idem                                                            idem
    ``backward_transfer``      idem                                                            idem
    ``forward_transfer``       idem; needs an initial evaluation (``fit_stream`` default)      idem
    ``system``                 ``system/cpu_seconds``, ``system/cpu_percent``,                 every training epoch and
                               ``system/ram_mb``, ``system/peak_ram_mb``; on CUDA              every ``trainer.test``
                               ``system/gpu_memory_mb``, ``system/gpu_peak_memory_mb``
    =========================  ==============================================================  =========================

    Training values are logged at the step Lightning gives them (an epoch's at the step of its last
    batch); experience and stream values at ``trainer.global_step``.

    What the values are:

    * **Training accuracy** needs the logits of each training batch. When the user's
      ``training_step`` returns a dict with ``"logits"`` (of the batch it received) they are
      used at no cost. Otherwise the callback runs one extra no-grad forward per step through the
      user's model, in eval mode and before the optimizer step (so it never changes training: no
      BatchNorm update, no dropout draw), about a third of a training step's compute. With
      replay methods that grow the batch in ``prepare_batch``, the accuracy of a step whose logits
      do not match the current experience's batch is that of the current experience's samples.
    * **Training loss** is the loss the step returned (the user's loss plus CL terms), weighted by
      batch size: ``train/loss_epoch`` is a per-sample mean, unlike ContinualModule's
      ``train/loss`` (a mean over steps). ``train/loss_step`` is ContinualModule's key when it is
      built with ``log_loss_on_step=True``; then only ContinualModule logs it. A step whose
      ``training_step`` returns no loss (a skipped batch) is not counted.
    * **Experience** values cover every epoch of the experience (over several fits when resumed)
      and are logged once, at the end of its training, straight to the loggers (Lightning forbids
      ``self.log`` there) and into ``trainer.callback_metrics``; they are also kept in
      :attr:`experience_results`. ``experience/seconds`` is the wall time of the training loop,
      ``experience/samples_per_second`` the training samples of all processes per second. The
      running sums are added up at each epoch end, synced, and saved in checkpoints from there (a
      checkpoint written mid-epoch resumes without that epoch's first part).
    * **Stream** values come from one evaluation of the whole test stream (``trainer.test``) and
      are logged at ``trainer.global_step``. The test loss is the cross-entropy of the logits (the
      stream evaluation does not call the user's ``test_step``); ``stream/loss`` and
      ``stream/accuracy`` are per-sample means over every test sample. Class ``c``'s accuracy is
      over the test samples of class ``c``; the seen-classes accuracy is over the test samples of
      the classes trained on so far, with the argmax over all outputs.
    * **Flip rates** compare each evaluation with the previous one (the first evaluation after
      an initial one compares with the untrained model): the share of test samples the new model
      gets wrong that the old one got right (negative) and the reverse (positive). Samples are
      matched by position, so every evaluation must see the same test data.
    * **System** values are those of the process of global rank 0 (the one whose loggers write);
      ``cpu_percent`` is CPU time over wall time since the epoch or evaluation began, in percent
      of one core. RAM is read from ``/proc`` and ``getrusage`` (no psutil).

    Counts are torchmetrics states reduced by sum (:class:`StreamConfusionMatrix`,
    :class:`StreamLoss`, :class:`StreamTopKAccuracy`, :class:`FlipCounts`,
    :class:`TrainingCounts`), so under ``strategy="ddp"`` every value equals the single-process
    one. Flips keep each rank's per-sample correctness of its own test shard; after each
    evaluation the shards are gathered once (a few bytes per test sample) so that a checkpoint
    written by rank 0 restores every rank's reference. A checkpoint resumed with another number
    of processes drops it (with a warning): flip rates then restart one evaluation later.

    Attributes:
        results: one dict per evaluation (``trainer.test``): ``"row"`` (the last trained experience;
            -1 for an initial evaluation), ``"step"``, every logged key with its value, and, when
            selected, ``"test/acc_exp{j}"``, ``"confusion_matrix"``, ``"flip_counts"`` (rows:
            negative, positive, compared samples; one column per experience) and the R-derived
            ``"stream/<name>"``.
        experience_results: one dict per trained experience: ``"experience"``, ``"step"`` and its
            logged values.

    Args:
        metrics: names of the metrics (see the table); ``ContinualMetrics.METRICS`` lists them.
        top_k: the ``k`` of ``stream_topk_accuracy``.

    Raises:
        ValueError: for an unknown metric name, a ``top_k`` that is not a positive integer (or,
            at setup, larger than the stream's number of classes), and ``forward_transfer``
            without an initial evaluation (when training starts, or at the first evaluation after
            training).
        TypeError: if ``metrics`` is not a sequence of names, or the callback runs without a
            ContinualModule and a StreamDataModule.

    Example:
        >>> metrics = ContinualMetrics(["epoch_accuracy", "stream_loss", "flip_rates"])
        >>> metrics.metrics
        ('epoch_accuracy', 'stream_loss', 'flip_rates')
        >>> ContinualMetrics(["stream_accuracy", "accuracy"])
        Traceback (most recent call last):
        ...
        ValueError: `metrics`: unknown name 'accuracy'; expected names among ...
    """

    METRICS: ClassVar[tuple[str, ...]] = (
        "minibatch_accuracy",
        "minibatch_loss",
        "epoch_accuracy",
        "epoch_loss",
        "experience_accuracy",
        "experience_loss",
        "experience_time",
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
    )
    DEFAULT: ClassVar[tuple[str, ...]] = (
        "epoch_accuracy",
        "epoch_loss",
        "experience_accuracy",
        "experience_loss",
        "experience_time",
        "stream_accuracy",
        "stream_loss",
        "seen_classes_accuracy",
        "flip_rates",
    )

    def __init__(self, metrics: Sequence[str] = DEFAULT, top_k: int = 5) -> None:
        if isinstance(metrics, str) or not isinstance(metrics, Sequence):
            raise TypeError(
                f"`metrics`: expected a sequence of metric names (e.g. ['stream_loss']), got {type(metrics).__name__}"
                + (f" {metrics!r}." if isinstance(metrics, str) else ".")
            )
        for name in metrics:
            if name not in self.METRICS:
                raise ValueError(f"`metrics`: unknown name {name!r}; expected names among {', '.join(self.METRICS)}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"`top_k`: expected a positive integer, got {top_k!r}.")
        self.metrics = tuple(dict.fromkeys(metrics))
        self.top_k = top_k
        self.results: list[dict[str, Any]] = []
        self.experience_results: list[dict[str, Any]] = []
        selected = set(self.metrics)
        self._needs_logits = bool(selected & _LOGITS_METRICS)
        self._needs_loss = bool(selected & _LOSS_METRICS)
        self._needs_training_counts = bool(
            selected & {"epoch_accuracy", "epoch_loss", "experience_accuracy", "experience_loss", "experience_time"}
        )
        # training
        self._training: TrainingCounts | None = None
        self._experience = {"correct": 0, "total": 0, "loss_sum": 0.0, "seconds": 0.0}
        self._completed_at_fit = 0
        self._train_started: float | None = None
        self._logits_in_outputs: bool | None = None
        self._pending_logits: Tensor | None = None
        self._log_loss_step = True
        # evaluation
        self._num_experiences = 0
        self._accuracy: StreamTopKAccuracy | None = None
        self._topk: StreamTopKAccuracy | None = None
        self._loss: StreamLoss | None = None
        self._confusion: StreamConfusionMatrix | None = None
        self._flips: FlipCounts | None = None
        self._flip_shards: dict[str, Any] = {}
        self._pending_flip_state: dict[str, Any] | None = None
        self._cpu_mark = (0.0, 0.0)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metrics=self.metrics, top_k=self.top_k)

    def _selected(self, name: str) -> bool:
        return name in self.metrics

    # ------------------------------------------------------------------------------------- setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "test"):
            return
        if trainer.world_size > 1:
            warnings.filterwarnings("ignore", message=_SYNC_ADVICE)
        # imported here: lightning_cl.core imports lightning_cl.metrics
        from lightning_cl.core.datamodule import StreamDataModule
        from lightning_cl.core.module import ContinualModule

        if not isinstance(pl_module, ContinualModule):
            raise TypeError(
                "ContinualMetrics: expected the model to be a lightning_cl.ContinualModule, "
                f"got {type(pl_module).__name__}."
            )
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if not isinstance(dm, StreamDataModule):
            got = "no datamodule" if dm is None else type(dm).__name__
            raise TypeError(f"ContinualMetrics: expected a lightning_cl.StreamDataModule, got {got}.")
        if self._selected("stream_topk_accuracy") and self.top_k > dm.num_classes:
            raise ValueError(
                f"`top_k`: expected at most the number of classes of the stream ({dm.num_classes}) for "
                f"'stream_topk_accuracy', got {self.top_k}."
            )
        num_test = len(dm.test_stream)
        if num_test != self._num_experiences:
            self._num_experiences = num_test
            self._accuracy = StreamTopKAccuracy(num_test, top_k=1) if self._selected("stream_accuracy") else None
            self._topk = StreamTopKAccuracy(num_test, self.top_k) if self._selected("stream_topk_accuracy") else None
            self._loss = StreamLoss(num_test) if self._selected("stream_loss") else None
            self._flips = FlipCounts(num_test) if self._selected("flip_rates") else None
            self._confusion = None
        if stage == "fit":
            self._completed_at_fit = dm.completed_experiences
            self._logits_in_outputs = None
            if self._needs_training_counts and self._training is None:
                self._training = TrainingCounts()
            # the same value under the same key: ContinualModule already logs it
            self._log_loss_step = not pl_module.log_loss_on_step

    def _check_initial(self, pl_module: ContinualModule, when: str) -> None:
        if self._selected("forward_transfer") and pl_module._initial is None:
            raise ValueError(
                f"`metrics`: 'forward_transfer' needs the accuracy of the untrained model, but {when} without "
                "an initial evaluation. Run trainer.test(model, datamodule=dm) before the first trainer.fit "
                "(fit_stream(..., evaluate_initial=True) does), or remove 'forward_transfer' from `metrics`."
            )

    # ---------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_initial(_continual(pl_module), "training starts")
        if self._training is not None:
            self._training.to(pl_module.device)
            self._training.reset()
        self._train_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cpu_mark = (time.process_time(), time.perf_counter())

    @staticmethod
    def _current_batch(batch: Any) -> Any:
        # with joint datasets (replay memories), the experience's own batch is under "current"
        if isinstance(batch, Mapping) and "current" in batch:
            return batch["current"]
        return batch

    def _forward(self, trainer: L.Trainer, pl_module: ContinualModule, batch: Any) -> Tensor:
        module = pl_module.module
        was_training = module.training
        module.eval()  # no BatchNorm update, no dropout draw: training is unchanged
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                return pl_module.predict_logits(batch).detach()
        finally:
            module.train(was_training)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._needs_logits and self._logits_in_outputs is not True:
            # before the optimizer step: the predictions of the model this step trains
            self._pending_logits = self._forward(trainer, _continual(pl_module), self._current_batch(batch))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor):  # the user skipped this step
            self._pending_logits = None
            return
        loss = loss.detach()
        if pl_module.automatic_optimization:
            # Lightning hands the loss divided by accumulate_grad_batches to this hook
            loss = loss * trainer.accumulate_grad_batches
        target = self._current_batch(batch)[1]
        size = target.numel()
        logits = None
        if self._needs_logits:
            given = outputs.get("logits") if isinstance(outputs, Mapping) else None
            if isinstance(given, Tensor) and given.dim() == 2 and given.shape[0] == size:
                logits, self._logits_in_outputs = given.detach(), True
            else:
                logits = self._pending_logits
                if logits is None:  # the output had logits before, not this time
                    logits = self._forward(trainer, _continual(pl_module), self._current_batch(batch))
                self._logits_in_outputs = False
            self._pending_logits = None
        if self._selected("minibatch_accuracy") and logits is not None:
            pl_module.log(
                "train/acc_step", F.num_correct(logits, target) / size, on_step=True, on_epoch=False, batch_size=size
            )
        if self._selected("minibatch_loss") and self._log_loss_step:
            pl_module.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=size)
        if self._training is not None:
            self._training.update(target, logits=logits, loss=loss if self._needs_loss else None)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values: dict[str, float] = {}
        if self._training is not None:
            counts = {k: v.item() for k, v in self._training.compute().items()}  # collective
            self._training.reset()
            if counts["total"] > 0:
                if self._selected("epoch_accuracy"):
                    values["train/acc_epoch"] = counts["correct"] / counts["total"]
                if self._selected("epoch_loss"):
                    values["train/loss_epoch"] = counts["loss_sum"] / counts["total"]
            for key in ("correct", "total", "loss_sum"):
                self._experience[key] += counts[key]
        if self._selected("system"):
            values.update(self._system(pl_module))
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_started is not None:
            self._experience["seconds"] += time.perf_counter() - self._train_started
            self._train_started = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        completed = getattr(trainer.datamodule, "completed_experiences", None)  # type: ignore[attr-defined]
        # ContinualModule ends an experience in on_train_end, or in on_fit_end for a fit that
        # only restores a checkpoint written after its last epoch: both come before teardown
        if stage != "fit" or completed is None or completed <= self._completed_at_fit:
            return
        self._end_experience(trainer, self._completed_at_fit)

    def _end_experience(self, trainer: L.Trainer, index: int) -> None:
        sums = self._experience
        values: dict[str, float] = {}
        total = int(sums["total"])
        if total > 0:
            if self._selected("experience_accuracy"):
                values["train/acc_experience"] = sums["correct"] / total
            if self._selected("experience_loss"):
                values["train/loss_experience"] = sums["loss_sum"] / total
        if self._selected("experience_time"):
            values["experience/seconds"] = sums["seconds"]
            if sums["seconds"] > 0:
                values["experience/samples_per_second"] = F.samples_per_second(total, sums["seconds"])
        self._experience = {"correct": 0, "total": 0, "loss_sum": 0.0, "seconds": 0.0}
        if not values:
            return
        step = trainer.global_step
        self.experience_results.append({"experience": index, "step": step, **values})
        # Lightning forbids self.log in on_train_end and later hooks: write to the loggers directly
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
                logger.save()

    # -------------------------------------------------------------------------------- evaluation
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: StreamDataModule = trainer.datamodule  # type: ignore[attr-defined]
        if dm.completed_experiences > 0:
            self._check_initial(_continual(pl_module), f"the test after experience {dm.completed_experiences - 1} runs")
        if self._pending_flip_state is not None:
            self._restore_flips(trainer, self._pending_flip_state)
            self._pending_flip_state = None
        if set(self.metrics) & _CONFUSION_METRICS:
            num_classes = self._confusion_size(trainer, _continual(pl_module), dm)
            if self._confusion is None or self._confusion.num_classes != num_classes:
                self._confusion = StreamConfusionMatrix(self._num_experiences, num_classes)
        for metric in self._test_metrics():
            metric.to(pl_module.device)
            metric.reset()
        self._cpu_mark = (time.process_time(), time.perf_counter())

    def _test_metrics(self) -> list[Any]:
        metrics = (self._accuracy, self._topk, self._loss, self._confusion, self._flips)
        return [m for m in metrics if m is not None]

    def _confusion_size(self, trainer: L.Trainer, pl_module: ContinualModule, dm: StreamDataModule) -> int:
        # The matrix must hold every prediction, and its shape must agree on all ranks before
        # any batch: one sample through the model gives its number of outputs.
        batch = sample_batch(dm.test_stream[0].dataset, pl_module.device)
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            outputs = pl_module.predict_logits(batch).shape[-1]
        top = max([*dm.train_stream.classes, *dm.test_stream.classes])
        return max(int(outputs), int(top) + 1)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if not isinstance(logits, Tensor):
            logits = _continual(pl_module).predict_logits(batch)
        target = batch[1]
        for metric in self._test_metrics():
            metric.update(logits, target, dataloader_idx)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: StreamDataModule = trainer.datamodule  # type: ignore[attr-defined]
        row = dm.completed_experiences - 1
        result: dict[str, Any] = {"row": row, "step": trainer.global_step}
        logged: dict[str, float] = {}
        # every compute() below is a collective: all ranks run this hook
        if self._accuracy is not None:
            counts = self._per_experience(self._accuracy.compute())
            for j, value in enumerate(F.accuracy(counts["correct"], counts["total"]).tolist()):
                result[f"test/acc_exp{j}"] = value
            logged["stream/accuracy"] = float(F.accuracy(counts["correct"].sum(), counts["total"].sum()))
        if self._loss is not None:
            counts = self._per_experience(self._loss.compute())
            for j, value in enumerate(F.mean_loss(counts["loss_sum"], counts["count"]).tolist()):
                logged[f"test/loss_exp{j}"] = value
            logged["stream/loss"] = float(F.mean_loss(counts["loss_sum"].sum(), counts["count"].sum()))
        if self._topk is not None:
            counts = self._per_experience(self._topk.compute())
            k = self.top_k
            for j, value in enumerate(F.accuracy(counts["correct"], counts["total"]).tolist()):
                logged[f"test/top{k}_acc_exp{j}"] = value
            logged[f"stream/top{k}_accuracy"] = float(F.accuracy(counts["correct"].sum(), counts["total"].sum()))
        if self._confusion is not None:
            C = self._confusion.num_classes
            confusion = self._confusion.compute().cpu().reshape(self._num_experiences, C, C)
            if self._selected("confusion_matrix"):
                result["confusion_matrix"] = confusion
            if self._selected("class_accuracy"):
                per_class = F.class_accuracy(confusion)
                for c in torch.nonzero(confusion.sum(dim=(0, 2))).flatten().tolist():
                    logged[f"test/acc_class{c}"] = float(per_class[c])
            if self._selected("seen_classes_accuracy") and row >= 0:
                seen = dm.train_stream.classes_seen_so_far(row)
                if confusion.sum(dim=(0, 2))[list(seen)].sum() > 0:
                    logged["stream/seen_classes_accuracy"] = F.seen_classes_accuracy(confusion, seen)
        if self._flips is not None:
            counts = self._per_experience(self._flips.compute())
            if self._flips.has_reference:
                negative, positive, total = (int(counts[k].sum()) for k in ("negative", "positive", "total"))
                result["flip_counts"] = torch.stack([counts[k] for k in ("negative", "positive", "total")])
                if total > 0:
                    logged["stream/negative_flip_rate"] = F.negative_flip_rate(negative, total)
                    logged["stream/positive_flip_rate"] = F.positive_flip_rate(positive, total)
            self._flips.commit()
            self._flip_shards = self._gather_flips(trainer)
        if self._selected("system"):
            logged.update(self._system(pl_module))
        for key, value in logged.items():
            pl_module.log(key, value)
        result.update(logged)
        self.results.append(result)
        for metric in self._test_metrics():
            metric.reset()

    def _per_experience(self, counts: dict[str, Tensor]) -> dict[str, Tensor]:
        # torchmetrics hands one-element results back as 0-d tensors (a stream of one experience)
        return {k: v.cpu().reshape(self._num_experiences) for k, v in counts.items()}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ContinualModule fills row i of R in its on_test_epoch_end, after this callback's
        module = _continual(pl_module)
        wanted = [name for name in _R_METRICS if self._selected(name)]
        if not wanted or not self.results or self.results[-1]["row"] < 0:
            return
        R = module.accuracy_matrix
        values = {
            "average_accuracy": lambda: F.average_accuracy(R),
            "forgetting": lambda: F.forgetting(R),
            "backward_transfer": lambda: F.backward_transfer(R),
            "forward_transfer": lambda: F.forward_transfer(R, module._initial),
        }
        for name in wanted:
            self.results[-1][f"stream/{name}"] = values[name]()

    def _system(self, pl_module: L.LightningModule) -> dict[str, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        elapsed = wall - self._cpu_mark[1]
        percent = 100.0 * (cpu - self._cpu_mark[0]) / elapsed if elapsed > 0 else None
        return system_metrics(pl_module.device, percent)

    # ------------------------------------------------------------------------------------- flips
    def _gather_flips(self, trainer: L.Trainer) -> dict[str, Any]:
        assert self._flips is not None  # for mypy: called when flips are selected
        reference = self._flips.reference_state()["correct"]
        lengths = torch.tensor([r.numel() for r in reference], dtype=torch.long)
        flat = torch.cat(reference).to(torch.uint8)
        if trainer.world_size > 1:
            # every rank's shard, so that the checkpoint rank 0 writes restores all of them
            device = self._flips.negative.device
            shards = [s.cpu() for s in gather_all_tensors(flat.to(device))]
            all_lengths = [s.cpu() for s in gather_all_tensors(lengths.to(device))]
        else:
            shards, all_lengths = [flat], [lengths]
        return {"world_size": trainer.world_size, "shards": shards, "lengths": all_lengths}

    def _restore_flips(self, trainer: L.Trainer, state: dict[str, Any]) -> None:
        if self._flips is None or not state.get("shards"):
            return
        world_size = int(state["world_size"])
        if world_size != trainer.world_size:
            rank_zero_warn(
                f"ContinualMetrics: the checkpoint's flip reference comes from {world_size} process(es), this "
                f"run has {trainer.world_size}; each holds other test samples, so flip rates restart one "
                "evaluation later."
            )
            return
        rank = trainer.global_rank
        flat, lengths = state["shards"][rank].bool(), state["lengths"][rank].tolist()
        self._flips.load_reference_state({"correct": list(torch.split(flat, lengths))})
        self._flip_shards = state

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "results": [dict(r) for r in self.results],
            "experience_results": [dict(r) for r in self.experience_results],
            "experience": dict(self._experience),
            "flips": dict(self._flip_shards),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = [dict(r) for r in state_dict.get("results", [])]
        self.experience_results = [dict(r) for r in state_dict.get("experience_results", [])]
        experience = state_dict.get("experience", {})
        self._experience = {
            "correct": int(experience.get("correct", 0)),
            "total": int(experience.get("total", 0)),
            "loss_sum": float(experience.get("loss_sum", 0.0)),
            "seconds": float(experience.get("seconds", 0.0)),
        }
        # the number of processes is known once the Trainer runs: applied at the next test
        self._pending_flip_state = dict(state_dict.get("flips", {}))
