"""SI: Synaptic Intelligence (Zenke, Poole & Ganguli)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_cl.callbacks._importance import (
    OptimizerStep,
    Terms,
    accumulate_path,
    check_apply,
    check_non_negative,
    check_positive,
    load_tensors_state,
    move_tensors_state,
    pad_to,
    penalty_loss_terms,
    snapshot,
    tensors_state,
    trainable_parameters,
)
from lightning_cl.core.callback import ContinualCallback, TrainingStep
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule

_STATE = ("_importance", "_anchor", "_start", "_path")


def _check_lambda(value: Any) -> float | list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return check_non_negative(value, "si_lambda")
    if len(value) == 0:
        raise ValueError("`si_lambda`: expected a non-negative number or one per experience, got an empty sequence.")
    return [check_non_negative(v, f"si_lambda[{i}]") for i, v in enumerate(value)]


class SI(ContinualCallback):
    """Synaptic Intelligence: a quadratic penalty weighted by each parameter's path integral.

    Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017.

    While an experience trains, SI accumulates per parameter the path integral of the loss
    decrease, ``omega += -g * delta_theta`` for every optimizer step (``g`` the gradient the step
    used, ``delta_theta`` the change the step really made). At the end of the experience it turns
    it into an importance, normalised by how far the parameter travelled over the experience::

        Omega <- relu(Omega + omega / (Delta_theta ** 2 + eps)),  Delta_theta = theta_end - theta_start

    and anchors ``theta* = theta_end``. Later experiences add the loss term ``"si"`` (logged as
    ``train/si_loss``)::

        si_lambda * sum_p min(Omega[p], max_importance) * (theta[p] - theta*[p]) ** 2

    with no factor 1/2 (the authors' code; Avalanche's ``SynapticIntelligencePlugin`` halves it).

    **The cap.** ``omega / (Delta_theta ** 2 + eps)`` has no upper bound: a parameter that moved
    back and forth (large ``omega``) and ended near its start (tiny ``Delta_theta``) gets an
    importance up to ``omega / eps``. Under SGD, a penalty curvature ``2 * si_lambda * Omega``
    above about ``2 * (1 + momentum) / lr`` makes the steps diverge; with ``eps=1e-7`` that
    happens at any useful ``si_lambda`` (PermutedMNIST, SGD(0.01, momentum=0.9): uncapped
    ``si_lambda=1`` ends at chance level). ``max_importance`` caps the importance the penalty
    uses (the state keeps the uncapped sum). The default ``1e-3`` is Avalanche's hard-coded cap,
    so ``si_lambda`` values behave as in Avalanche up to its factor 1/2; SI then needs a larger
    ``si_lambda`` than the paper's to act (PermutedMNIST, 5 experiences of one epoch: naive 0.876,
    ``si_lambda`` 1 / 10 / 100 / 1000 give 0.883 / 0.903 / 0.890 / 0.785). ``max_importance=None``
    is the paper's uncapped form: pair it with a larger ``eps`` (the paper's ``xi`` is 0.1 on
    PermutedMNIST; there uncapped ``si_lambda=10, eps=0.1`` gives 0.910) or an optimizer with
    bounded steps such as Adam, as the authors used.

    Notes for users:

    * ``g`` is the gradient of the loss *without SI's own penalty*, as in the authors' code
      (``unreg_grads``): SI measures what each parameter contributed to learning the task, not
      to staying near its anchor. It is the final gradient of the step (synced across processes,
      unscaled, including other methods' loss terms), minus the exact gradient of SI's penalty,
      which is known in closed form; nothing is computed twice. With ``apply="grad"`` it is read
      before the penalty's gradient is added: both forms give the same ``g`` and the same path.
    * ``g`` and ``theta`` are read in ``on_before_optimizer_step`` and the move is measured in
      ``on_train_batch_end``: only real steps count (under gradient accumulation the micro-batches
      without a step add nothing, a skipped batch moves nothing, and a step the fp16 gradient
      scaler drops for overflowing gradients is left out).
    * The importance is clamped at 0 after each experience (``relu``, as in the authors' code):
      a parameter whose moves raised the loss gets no penalty rather than a reward for drifting
      (Avalanche leaves negative importances, i.e. negative curvature, in place).
    * Parameters are matched by name; a parameter that grew keeps its importance on its old
      entries, new entries start at zero importance. Frozen parameters are not tracked.
    * Memory: four copies of the trainable parameters during training (path, start, and the
      step's gradient and parameters) and two between experiences (importance and anchor).

    Args:
        si_lambda: weight of the penalty, ``>= 0``, or one weight per experience of the stream
            (the value at index ``k`` is used while training experience ``k``; index 0 is unused,
            nothing is penalised yet).
        eps: damping ``> 0`` added to ``Delta_theta ** 2`` (``xi`` in the paper; this default is
            Avalanche's).
        max_importance: cap ``> 0`` of the importance the penalty uses, or ``None`` for none.
        apply: ``"loss"`` (a loss term) or ``"grad"`` (added to the gradients).

    Raises:
        ValueError: for a negative ``si_lambda`` (or entry), an empty list, a list whose length is
            not the stream's number of experiences, a non-positive ``eps`` or ``max_importance``,
            or an unknown ``apply``.
        TypeError: for a non-numeric ``si_lambda``, ``eps`` or ``max_importance``.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule
        >>> from lightning_cl.benchmarks import from_tensors
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(80, 4), torch.arange(80) % 4
        >>> dm = from_tensors(x, y, x, y, num_experiences=2, class_order=range(4), batch_size=16)
        >>> si = SI(si_lambda=1.0)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[si], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False)
        >>> model = ContinualModule(Classifier(MLP(4, 4, hidden_sizes=(8,))))
        >>> for _ in range(dm.num_experiences):
        ...     trainer.fit(model, datamodule=dm)
        >>> bool(all((omega >= 0).all() for omega in si.state_dict()["importance"].values()))
        True
    """

    def __init__(
        self,
        si_lambda: float | Sequence[float],
        eps: float = 1e-7,
        max_importance: float | None = 1e-3,
        apply: str = "loss",
    ) -> None:
        self.si_lambda = _check_lambda(si_lambda)
        self.eps = check_positive(eps, "eps")  # a parameter that never moved divides by it
        self.max_importance = None if max_importance is None else check_positive(max_importance, "max_importance")
        self.apply = check_apply(apply)
        self._experience = 0
        self._importance: dict[str, Tensor] = {}  # Omega, not capped
        self._capped: dict[str, Tensor] | None = None  # Omega capped at max_importance, built at first use
        self._anchor: dict[str, Tensor] = {}  # theta*
        self._start: dict[str, Tensor] = {}  # theta at the start of the current experience
        self._path: dict[str, Tensor] = {}  # omega of the current experience
        self._step = OptimizerStep()  # the step in flight: gradient and parameters before the optimizer step

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            si_lambda=self.si_lambda, eps=self.eps, max_importance=self.max_importance, apply=self.apply
        )

    @property
    def terms(self) -> Terms:
        """The ``(importance, anchor)`` pair the penalty uses (none before the first experience ends)."""
        if not self._importance:
            return []
        if self._capped is None:
            cap = self.max_importance
            self._capped = (
                self._importance if cap is None else {k: v.clamp_max(cap) for k, v in self._importance.items()}
            )
        return [(self._capped, self._anchor)]

    def current_lambda(self) -> float:
        """The penalty weight of the experience being trained."""
        if isinstance(self.si_lambda, list):
            return self.si_lambda[min(self._experience, len(self.si_lambda) - 1)]
        return self.si_lambda

    # --------------------------------------------------------------------------------- hooks
    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        if isinstance(self.si_lambda, list):
            count = len(pl_module.datamodule.train_stream)
            if len(self.si_lambda) != count:
                raise ValueError(
                    f"`si_lambda`: expected one value per experience ({count}), got {len(self.si_lambda)}."
                )
        self._experience = experience.index
        # after the model's adaptation: the shapes this experience trains
        self._start = snapshot(trainable_parameters(pl_module.module))
        self._path = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        move_tensors_state(self, _STATE, pl_module.device)
        self._capped = None

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        return penalty_loss_terms(step, "si", self.apply, self.current_lambda(), self.terms)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        assert isinstance(pl_module, ContinualModule)  # for mypy: SI runs inside a ContinualModule
        params = trainable_parameters(pl_module.module)
        self._step.record(trainer, params, self.terms, self.current_lambda(), self.apply)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._step.finish(trainer)
        if step is None:
            return
        assert isinstance(pl_module, ContinualModule)  # for mypy: SI runs inside a ContinualModule
        accumulate_path(self._path, *step, trainable_parameters(pl_module.module))

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        params = trainable_parameters(pl_module.module)
        importance = dict(self._importance)
        with torch.no_grad():
            for name, p in params.items():
                path = self._path.get(name)
                start = self._start.get(name)
                old = importance.get(name)
                total = torch.zeros_like(p) if old is None else pad_to(old, p.shape)
                if path is not None and start is not None and start.shape == p.shape:
                    total = total + path / ((p - start).square() + self.eps)
                importance[name] = total.clamp_min(0)
        self._importance, self._capped = importance, None
        # a parameter frozen during this experience keeps its earlier anchor
        self._anchor = {**self._anchor, **snapshot(params)}
        self._start, self._path = {}, {}

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"experience": self._experience, **tensors_state(self, _STATE)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._experience = int(state_dict.get("experience", 0))
        load_tensors_state(self, _STATE, state_dict)
        self._capped = None
        self._step.clear()
