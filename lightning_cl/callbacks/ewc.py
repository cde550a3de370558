"""EWC: Elastic Weight Consolidation (Kirkpatrick et al.), with the online variant (Schwarz et al.)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer

from lightning_cl.callbacks._common import cpu_copy
from lightning_cl.callbacks._importance import (
    Terms,
    add_penalty_gradients,
    check_apply,
    check_batch_size,
    check_fraction,
    check_non_negative,
    experience_importance,
    importance_batch_size,
    load_tensors,
    merge_terms,
    pad_to,
    penalty_loss_terms,
    quadratic_penalty,
    snapshot,
    to_device,
    trainable_parameters,
)
from lightning_cl.core.callback import ContinualCallback, TrainingStep
from lightning_cl.core.dynamic import forward_logits
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule

MODES = ("separate", "online")


def sample_cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Per-sample cross-entropy of the model's logits (task labels reach a multi-head ``forward``)."""
    return F.cross_entropy(forward_logits(model, batch), batch[1], reduction="none")


class EWC(ContinualCallback):
    """Elastic Weight Consolidation: a quadratic penalty weighted by the Fisher information.

    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017.
    Online mode: Schwarz et al., "Progress & Compress: A scalable framework for continual
    learning", ICML 2018.

    At the end of each experience EWC estimates the diagonal of the empirical Fisher
    information, ``F[p] = mean over the experience's training samples of (d CE(f(x), y) / d theta_p) ** 2``
    (per-sample gradients of the cross-entropy of the model's logits, model in eval mode, each
    sample's own gradient squared), and stores it with the parameters ``theta*`` reached. While
    later experiences train, it adds the loss term ``"ewc"`` (logged as ``train/ewc_loss``)::

        ewc_lambda * sum_k sum_p F_k[p] * (theta[p] - theta*_k[p]) ** 2

    with no factor 1/2 (the form of Avalanche's ``EWCPlugin``, so its ``ewc_lambda`` values carry
    over up to the Fisher estimate below).

    * ``mode="separate"`` keeps one ``(F_k, theta*_k)`` per past experience and sums their penalties
      (memory grows with the number of experiences; the time of a step does not: the pairs are
      merged into one with the same value and gradient, ``S = sum_k F_k``,
      ``a = sum_k F_k theta*_k / S`` plus a constant).
    * ``mode="online"`` keeps one ``F = decay_factor * F_old + F_new`` and the latest ``theta*``.
      ``decay_factor`` is required there and rejected in separate mode (it would silently do
      nothing).

    Notes for users:

    * The Fisher is the mean of *per-sample* squared gradients, as in the paper. Avalanche squares
      the gradient of each mini-batch's mean loss instead, which is smaller by up to the batch
      size; the same ``ewc_lambda`` is therefore a stronger penalty here.
    * It is computed on the experience's own dataset (``experience.dataset``; no replay data), in
      batches of ``batch_size``, without a Python loop over samples: ``nn.Linear`` parameters by an
      exact outer-product identity, all others with ``torch.func`` ``vmap(grad(...))``. A model
      whose ``forward`` takes task labels gets each sample's label.
    * Under ``strategy="ddp"`` each rank computes the sums on its shard ``rank::world_size`` of the
      dataset, and sums and counts are added across ranks: every rank holds the Fisher a single
      process would compute.
    * ``apply="grad"`` adds the penalty's gradient ``2 * ewc_lambda * F * (theta - theta*)`` to the
      gradients in ``on_before_optimizer_step`` instead of backpropagating a loss term (no graph
      for the penalty); with any optimizer the parameters follow the same path as with
      ``apply="loss"``, and ``train/ewc_loss`` logs the same value.
    * Parameters are matched by name. A parameter that grew since (a classifier that gained
      outputs) keeps the penalty on its old entries; the new ones have none. Frozen parameters
      (``requires_grad=False``) get no Fisher.

    Args:
        ewc_lambda: weight of the penalty, ``>= 0``.
        mode: ``"separate"`` or ``"online"``.
        decay_factor: in online mode, the weight in ``[0, 1]`` of the previous Fisher; must be
            ``None`` in separate mode.
        apply: ``"loss"`` (a loss term) or ``"grad"`` (added to the gradients).
        batch_size: batch size of the Fisher pass; ``None`` takes the datamodule's
            ``eval_batch_size``.

    Raises:
        ValueError: for a negative ``ewc_lambda``, an unknown ``mode`` or ``apply``, a missing or
            out-of-range ``decay_factor`` in online mode, a ``decay_factor`` in separate mode, or a
            non-positive ``batch_size``.
        TypeError: for a non-numeric ``ewc_lambda`` or ``decay_factor``.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule
        >>> from lightning_cl.benchmarks import from_tensors
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(80, 4), torch.arange(80) % 4
        >>> dm = from_tensors(x, y, x, y, num_experiences=2, class_order=range(4), batch_size=16)
        >>> ewc = EWC(ewc_lambda=100.0)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[ewc], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False)
        >>> model = ContinualModule(Classifier(MLP(4, 4, hidden_sizes=(8,))))
        >>> for _ in range(dm.num_experiences):
        ...     trainer.fit(model, datamodule=dm)
        >>> len(ewc.state_dict()["fisher"])  # one Fisher per experience in separate mode
        2
        >>> float(trainer.callback_metrics["train/ewc_loss"]) > 0
        True
    """

    def __init__(
        self,
        ewc_lambda: float,
        mode: str = "separate",
        decay_factor: float | None = None,
        apply: str = "loss",
        batch_size: int | None = None,
    ) -> None:
        self.ewc_lambda = check_non_negative(ewc_lambda, "ewc_lambda")
        if mode not in MODES:
            raise ValueError(f"`mode`: expected one of {list(MODES)}, got {mode!r}.")
        self.mode = mode
        if mode == "online":
            if decay_factor is None:
                raise ValueError("`decay_factor`: mode='online' needs a decay factor in [0, 1], got None.")
            self.decay_factor: float | None = check_fraction(decay_factor, "decay_factor")
        elif decay_factor is not None:
            raise ValueError(
                f"`decay_factor`: only used in mode='online', got {decay_factor!r} with mode='separate' "
                "(pass mode='online' or drop decay_factor)."
            )
        else:
            self.decay_factor = None
        self.apply = check_apply(apply)
        self.batch_size = check_batch_size(batch_size)
        # one (Fisher, anchor) pair per past experience (separate) or a single one (online)
        self._fisher: list[dict[str, Tensor]] = []
        self._anchor: list[dict[str, Tensor]] = []
        # the pairs merged into one with the same penalty (built at first use after a change)
        self._merged: tuple[Terms, float] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            ewc_lambda=self.ewc_lambda, mode=self.mode, decay_factor=self.decay_factor, apply=self.apply
        )

    @property
    def terms(self) -> Terms:
        """The ``(Fisher, anchor)`` pairs the penalty sums over, keyed by parameter name."""
        return list(zip(self._fisher, self._anchor))

    def _penalty_terms(self) -> tuple[Terms, float]:
        # separate mode: k pairs cost k times one pair per step; merged, one pair and a constant
        if self._merged is None:
            if len(self._fisher) > 1:
                importance, anchor, constant = merge_terms(self.terms)
                self._merged = ([(importance, anchor)], constant)
            else:
                self._merged = (self.terms, 0.0)
        return self._merged

    def penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        """``ewc_lambda * sum_k sum_p F_k[p] * (theta[p] - theta*_k[p]) ** 2`` for ``params`` (by name)."""
        terms, constant = self._penalty_terms()
        return self.ewc_lambda * (quadratic_penalty(params, terms) + constant)

    # --------------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # stored tensors stay where they were made or loaded (CPU after a checkpoint): move once per fit
        self._fisher = [to_device(f, pl_module.device) for f in self._fisher]
        self._anchor = [to_device(a, pl_module.device) for a in self._anchor]
        self._merged = None

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        model = pl_module.module
        batch_size = importance_batch_size(self.batch_size, trainer)
        fisher = experience_importance(trainer, model, experience.dataset, sample_cross_entropy, "square", batch_size)
        anchor = snapshot(trainable_parameters(model))
        self._merged = None
        if self.mode == "separate" or not self._fisher:
            self._fisher.append(fisher)
            self._anchor.append(anchor)
            return
        decay = self.decay_factor
        assert decay is not None  # for mypy: checked in __init__ for online mode
        old_fisher, old_anchor = self._fisher[0], self._anchor[0]
        combined = {name: decay * f for name, f in old_fisher.items() if name not in fisher}
        for name, f in fisher.items():
            combined[name] = f if name not in old_fisher else decay * pad_to(old_fisher[name], f.shape) + f
        self._fisher = [combined]
        # a parameter frozen during this experience keeps its earlier anchor
        self._anchor = [{**old_anchor, **anchor}]

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        return penalty_loss_terms(step, "ewc", self.apply, self.ewc_lambda, *self._penalty_terms())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        if self.apply != "grad" or not self._fisher:
            return
        assert isinstance(pl_module, ContinualModule)  # for mypy: EWC runs inside a ContinualModule
        terms, _ = self._penalty_terms()
        add_penalty_gradients(dict(pl_module.module.named_parameters()), terms, self.ewc_lambda)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "fisher": [cpu_copy(f) for f in self._fisher],
            "anchor": [cpu_copy(a) for a in self._anchor],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mode = state_dict.get("mode", self.mode)
        if mode != self.mode:
            raise ValueError(f"EWC.load_state_dict: the state is of mode={mode!r}, this EWC has mode={self.mode!r}.")
        self._fisher = [load_tensors(f) for f in state_dict.get("fisher", [])]
        self._anchor = [load_tensors(a) for a in state_dict.get("anchor", [])]
        self._merged = None
