"""RWalk: Riemannian Walk (Chaudhry et al.)."""

from __future__ import annotations

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
    check_fraction,
    check_non_negative,
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

_STATE = ("_fisher", "_path_loss", "_checkpoint", "_scores", "_experience_scores", "_importance", "_anchor")


def _max(tensors: dict[str, Tensor]) -> Tensor | None:
    return torch.stack([t.max() for t in tensors.values() if t.numel()]).max() if tensors else None


class RWalk(ContinualCallback):
    """Riemannian Walk: an online Fisher (EWC++) plus a path-integral score, as one quadratic penalty.

    Chaudhry, Dokania, Ajanthan & Torr, "Riemannian Walk for Incremental Learning: Understanding
    Forgetting and Intransigence", ECCV 2018.

    Every optimizer step, with ``g`` the step's gradient and ``theta`` the parameters:

    * the Fisher is a moving average (EWC++, eq. 6): ``F <- ewc_alpha * g ** 2 + (1 - ewc_alpha) * F``
      (``F = g ** 2`` at the very first step; ``F`` is never reset between experiences);
    * the first-order loss change of the step is accumulated: ``L <- L - g * (theta_after - theta_before)``;
    * every ``delta_t`` steps the path score grows by the loss change over the interval divided by
      the Fisher distance travelled (eq. 7),
      ``s <- s + L / (0.5 * F * (theta - theta_checkpoint) ** 2 + eps)`` (``eps`` the machine epsilon),
      then ``L <- 0`` and ``theta_checkpoint <- theta``.

    At the end of an experience the score of the experience is averaged with the earlier ones
    (``S <- 0.5 * (S + s)``; ``S = s`` after the first), and both terms are normalised to
    ``[0, 1]`` by their largest entry over all parameters (negative scores are dropped)::

        Omega = F / max(F) + relu(S) / max(relu(S))

    with the anchor ``theta*`` the parameters reached. Later experiences add the loss term
    ``"rwalk"`` (logged as ``train/rwalk_loss``)::

        ewc_lambda * sum_p Omega[p] * (theta[p] - theta*[p]) ** 2

    The bookkeeping, normalisation and defaults are those of Avalanche's ``RWalkPlugin``, with one
    difference in cost: Avalanche recomputes the gradient of the unregularised loss with an extra
    forward and backward pass per step (model in eval mode); here ``g`` is the step's own final
    gradient (synced across processes, unscaled) minus the exact gradient of RWalk's penalty
    (known in closed form), so it is also the gradient of the loss without RWalk's term, at no
    extra cost; it differs only through train-mode layers (dropout, batch norm). The step counter
    that triggers a score update every ``delta_t`` steps runs over the whole stream, as
    Avalanche's iteration counter; the loss change and checkpoint restart at each experience, and
    an unfinished interval at the end of an experience is dropped. Only real optimizer steps count:
    micro-batches of gradient accumulation add nothing, and a step the fp16 gradient scaler drops
    for overflowing gradients updates neither the Fisher nor the path.

    Parameters are matched by name; a grown parameter keeps its Fisher, score and penalty on its
    old entries, new entries start at zero. For class-incremental streams the paper pairs RWalk
    with replay (e.g. ``callbacks=[Replay(...), RWalk()]``).

    Args:
        ewc_lambda: weight of the penalty, ``>= 0``.
        ewc_alpha: weight in ``[0, 1]`` of the newest squared gradient in the moving-average Fisher.
        delta_t: the number of optimizer steps between two path-score updates, ``>= 1``.
        apply: ``"loss"`` (a loss term) or ``"grad"`` (added to the gradients).

    Raises:
        ValueError: for a negative ``ewc_lambda``, an ``ewc_alpha`` outside ``[0, 1]``, a
            ``delta_t`` below 1 or an unknown ``apply``.
        TypeError: for a non-numeric ``ewc_lambda`` or ``ewc_alpha``, or a non-integer ``delta_t``.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from lightning_cl import ContinualModule
        >>> from lightning_cl.benchmarks import from_tensors
        >>> from lightning_cl.models import MLP, Classifier
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(80, 4), torch.arange(80) % 4
        >>> dm = from_tensors(x, y, x, y, num_experiences=2, class_order=range(4), batch_size=16)
        >>> rwalk = RWalk(ewc_lambda=0.1, ewc_alpha=0.9, delta_t=2)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[rwalk], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False)
        >>> model = ContinualModule(Classifier(MLP(4, 4, hidden_sizes=(8,))))
        >>> for _ in range(dm.num_experiences):
        ...     trainer.fit(model, datamodule=dm)
        >>> max(float(omega.max()) for omega in rwalk.state_dict()["importance"].values()) <= 2
        True
    """

    def __init__(self, ewc_lambda: float = 0.1, ewc_alpha: float = 0.9, delta_t: int = 10, apply: str = "loss") -> None:
        self.ewc_lambda = check_non_negative(ewc_lambda, "ewc_lambda")
        self.ewc_alpha = check_fraction(ewc_alpha, "ewc_alpha")
        if isinstance(delta_t, bool) or not isinstance(delta_t, int):
            raise TypeError(f"`delta_t`: expected an integer >= 1, got {type(delta_t).__name__} {delta_t!r}.")
        if delta_t < 1:
            raise ValueError(f"`delta_t`: expected an integer >= 1, got {delta_t!r}.")
        self.delta_t = delta_t
        self.apply = check_apply(apply)
        self._steps = 0  # optimizer steps over the whole stream
        self._fisher: dict[str, Tensor] = {}  # moving-average Fisher (EWC++)
        self._path_loss: dict[str, Tensor] = {}  # loss change since the last checkpoint
        self._checkpoint: dict[str, Tensor] = {}  # parameters at the last checkpoint
        self._scores: dict[str, Tensor] = {}  # path scores of the current experience
        self._experience_scores: dict[str, Tensor] = {}  # averaged over the past experiences
        self._importance: dict[str, Tensor] = {}  # Omega, the penalty's weights
        self._anchor: dict[str, Tensor] = {}  # theta*
        self._step = OptimizerStep()  # the step in flight: gradient and parameters before the optimizer step

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            ewc_lambda=self.ewc_lambda, ewc_alpha=self.ewc_alpha, delta_t=self.delta_t, apply=self.apply
        )

    @property
    def terms(self) -> Terms:
        """The ``(importance, anchor)`` pair the penalty uses (none before the first experience ends)."""
        return [(self._importance, self._anchor)] if self._importance else []

    # --------------------------------------------------------------------------------- hooks
    def on_experience_start(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        self._checkpoint = snapshot(trainable_parameters(pl_module.module))
        self._path_loss, self._scores = {}, {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        move_tensors_state(self, _STATE, pl_module.device)

    def loss_terms(self, step: TrainingStep) -> dict[str, Tensor]:
        return penalty_loss_terms(step, "rwalk", self.apply, self.ewc_lambda, self.terms)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer) -> None:
        assert isinstance(pl_module, ContinualModule)  # for mypy: RWalk runs inside a ContinualModule
        params = trainable_parameters(pl_module.module)
        self._step.record(trainer, params, self.terms, self.ewc_lambda, self.apply)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._step.finish(trainer)
        if step is None:
            return
        grads, before = step
        assert isinstance(pl_module, ContinualModule)  # for mypy: RWalk runs inside a ContinualModule
        params = trainable_parameters(pl_module.module)
        with torch.no_grad():
            # the Fisher of this step's gradient, counted once the step is known to have happened
            for name, g in grads.items():
                old = self._fisher.get(name)
                if old is None:
                    self._fisher[name] = g.square()
                else:
                    self._fisher[name] = self.ewc_alpha * g.square() + (1 - self.ewc_alpha) * pad_to(old, g.shape)
            accumulate_path(self._path_loss, grads, before, params)
            self._steps += 1
            if self._steps % self.delta_t == 0:
                self._update_scores(params)

    def _update_scores(self, params: dict[str, Tensor]) -> None:
        for name, p in params.items():
            fisher, loss = self._fisher.get(name), self._path_loss.get(name)
            checkpoint = self._checkpoint.get(name)
            if fisher is None or loss is None or checkpoint is None or checkpoint.shape != p.shape:
                continue
            eps = torch.finfo(loss.dtype).eps
            score = loss / (0.5 * pad_to(fisher, p.shape) * (p - checkpoint).square() + eps)
            old = self._scores.get(name)
            self._scores[name] = score if old is None else old + score
        self._path_loss = {}
        self._checkpoint = snapshot(params)

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        params = trainable_parameters(pl_module.module)
        scores = dict(self._experience_scores)
        for name, score in self._scores.items():
            old = scores.get(name)
            scores[name] = score if old is None else 0.5 * (pad_to(old, score.shape) + score)
        self._experience_scores = scores
        with torch.no_grad():
            positive = {name: s.clamp_min(0) for name, s in scores.items()}
            max_fisher, max_score = _max(self._fisher), _max(positive)
            importance = {}
            for name, fisher in self._fisher.items():
                # an all-zero term (no step yet, no positive score) adds nothing instead of 0/0
                omega = fisher / max_fisher if max_fisher is not None and max_fisher > 0 else torch.zeros_like(fisher)
                if name in positive and max_score is not None and max_score > 0:
                    omega = omega + pad_to(positive[name], fisher.shape) / max_score
                importance[name] = omega
        self._importance = importance
        self._anchor = {**self._anchor, **snapshot(params)}
        self._scores, self._path_loss = {}, {}

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self._steps, **tensors_state(self, _STATE)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._steps = int(state_dict.get("steps", 0))
        load_tensors_state(self, _STATE, state_dict)
        self._step.clear()
