"""MAS: Memory Aware Synapses (Aljundi et al.)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_cl.callbacks._importance import (
    Terms,
    add_penalty_gradients,
    check_apply,
    check_batch_size,
    check_fraction,
    check_non_negative,
    experience_importance,
    importance_batch_size,
    load_tensors_state,
    move_tensors_state,
    pad_to,
    penalty_loss_terms,
    snapshot,
    tensors_state,
    trainable_parameters,
)
from lightning_cl.core.callback import ContinualCallback, TrainingStep
from lightning_cl.core.dynamic import forward_logits
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule

_STATE = ("_importance", "_anchor")


def sample_squared_norm(model: nn.Module, batch: Any) -> Tensor:
    """Per-sample squared L2 norm of the model's outputs, ``||f(x)||_2 ** 2`` (no labels needed)."""
    return forward_logits(model, batch).square().sum(dim=1)


class MAS(ContinualCallback):
    """Memory Aware Synapses: importance from the sensitivity of the outputs to each parameter.

    Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars, "Memory Aware Synapses: Learning what
    (not) to forget", ECCV 2018.

    At the end of each experience MAS measures, without labels, how much each parameter moves
    the network's outputs::

        Omega_new[p] = mean over the experience's samples x of | d ||f(x)||_2 ** 2 / d theta_p |

    (per sample, then averaged; ``f(x)`` the logits, model in eval mode), accumulates it as
    ``Omega <- alpha * Omega + (1 - alpha) * Omega_new`` (``Omega`` starts at zero, as in
    Avalanche, so after the first experience ``Omega = (1 - alpha) * Omega_new``) and anchors the
    parameters reached, ``theta*``. Later experiences add the loss term ``"mas"`` (logged as
    ``train/mas_loss``)::

        lambda_reg * sum_p Omega[p] * (theta[p] - theta*[p]) ** 2

    as in the paper (eq. 3). Avalanche's ``MASPlugin`` (after FACIL) halves the penalty and takes
    the absolute gradient of the batch mean of the *unsquared* norm, so its ``lambda_reg`` does
    not carry over one to one. The squared norm makes ``Omega`` grow with the size of the logits:
    under SGD a penalty curvature ``2 * lambda_reg * Omega`` above about
    ``2 * (1 + momentum) / lr`` makes training diverge, so large-logit models need a small
    ``lambda_reg``.

    Importance is computed on ``experience.dataset`` in batches of ``batch_size``, without a
    Python loop over samples, and summed across processes under ``strategy="ddp"`` (each rank
    takes the samples ``rank::world_size``). Parameters are matched by name; a grown parameter
    keeps its importance on its old entries, new entries start at zero. ``apply="grad"`` adds the
    penalty's gradient in ``on_before_optimizer_step`` instead of a loss term, with the same
    result.

    Args:
        lambda_reg: weight of the penalty, ``>= 0``.
        alpha: weight in ``[0, 1]`` of the previous importance in the running average.
        apply: ``"loss"`` (a loss term) or ``"grad"`` (added to the gradients).
        batch_size: batch size of the importance pass; ``None`` takes the datamodule's
            ``eval_batch_size``.

    Raises:
        ValueError: for a negative ``lambda_reg``, an ``alpha`` outside ``[0, 1]``, an unknown
            ``apply`` or a non-positive ``batch_size``.
        TypeError: for a non-numeric ``lambda_reg`` or ``alpha``.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule
        >>> from lightning_cl.benchmarks import from_tensors
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(80, 4), torch.arange(80) % 4
        >>> dm = from_tensors(x, y, x, y, num_experiences=2, class_order=range(4), batch_size=16)
        >>> mas = MAS(lambda_reg=1.0, alpha=0.5)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[mas], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False)
        >>> model = ContinualModule(Classifier(MLP(4, 4, hidden_sizes=(8,))))
        >>> for _ in range(dm.num_experiences):
        ...     trainer.fit(model, datamodule=dm)
        >>> float(trainer.callback_metrics["train/mas_loss"]) > 0
        True
    """

    def __init__(
        self, lambda_reg: float = 1.0, alpha: float = 0.5, apply: str = "loss", batch_size: int | None = None
    ) -> None:
        self.lambda_reg = check_non_negative(lambda_reg, "lambda_reg")
        self.alpha = check_fraction(alpha, "alpha")
        self.apply = check_apply(apply)
        self.batch_size = check_batch_size(batch_size)
        self._importance: dict[str, Tensor] = {}
        self._anchor: dict[str, Tensor] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(lambda_reg=self.lambda_reg, alpha=self.alpha, apply=self.apply)

    @property
    def terms(self) -> Terms:
        """The ``(importance, anchor)`` pair the penalty uses (none before the first experience ends)."""
        return [(self._importance, self._anchor)] if self._importance else []

    # --------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        move_tensors_state(self, _STATE, pl_module.device)

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        model = pl_module.module
        batch_size = importance_batch_size(self.batch_size, trainer)
        new = experience_importance(trainer, model, experience.dataset, sample_squared_norm, "abs", batch_size)
        # parameters frozen during this experience only decay
        importance = {name: self.alpha * omega for name, omega in self._importance.items() if name not in new}
        for name, omega in new.items():
            old = self._importance.get(name)
            previous = torch.zeros_like(omega) if old is None else pad_to(old, omega.shape)
            importance[name] = self.alpha * previous + (1 - self.alpha) * omega
        self._importance = importance
        self._anchor = {**self._anchor, **snapshot(trainable_parameters(model))}

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        return penalty_loss_terms(step, "mas", self.apply, self.lambda_reg, self.terms)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        if self.apply != "grad" or not self._importance:
            return
        assert isinstance(pl_module, ContinualModule)  # for mypy: MAS runs inside a ContinualModule
        add_penalty_gradients(dict(pl_module.module.named_parameters()), self.terms, self.lambda_reg)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return tensors_state(self, _STATE)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_tensors_state(self, _STATE, state_dict)
