"""CoPE: class prototypes that evolve with the stream, and nearest-prototype classification."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_cl.benchmarks._common import positive_int
from lightning_cl.buffers.base import Buffer, Candidates
from lightning_cl.callbacks._replay import cat_batches, is_online, make_buffer, memory_view, mini_candidates
from lightning_cl.core.callback import ContinualCallback, JointData, TrainingStep
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import probing, sample_batch
from lightning_cl.core.experience import Experience
from lightning_cl.core.module import ContinualModule


def ppp_loss(embeddings: Tensor, targets: Tensor, prototypes: Tensor, T: float) -> Tensor:
    """The pseudo-prototypical proxy loss of a batch of L2-normalised embeddings.

    For each class ``c`` of the batch, with ``p_c`` its prototype, ``p_k`` the other classes'
    prototypes and ``P(c | x; u) = e^{x.u/T} / (e^{x.u/T} + sum_k e^{x.p_k/T})`` the probability
    of class ``c`` for ``x`` with ``u`` standing in for ``c``'s prototype:

    * attractor, per sample ``x_i`` of class ``c``: ``log mean_u P(c | x_i; u)`` over the proxies
      ``u``: the prototype ``p_c`` and the other samples of class ``c`` (pseudo-prototypes);
    * repellor, per sample ``x_j`` of another class and per sample ``x_i`` of class ``c``:
      ``log(1 - (P(c | x_j; x_i) + P(c | x_j; p_c)) / 2)``.

    The loss is minus the sum of both over all classes, divided by the batch size. Proxies and
    prototypes are constants (no gradient flows into them), as in Avalanche's ``PPPloss``;
    probabilities are computed in log space, so any temperature is safe.

    Args:
        embeddings: ``[B, D]`` L2-normalised embeddings.
        targets: ``[B]`` class ids, rows of ``prototypes``.
        prototypes: ``[C, D]`` L2-normalised class prototypes (at least two).
        T: the softmax temperature.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(ppp_loss(z, torch.tensor([0, 1]), z, T=1.0).item(), 4)
        0.6265
    """
    z = embeddings.float()
    prototypes = prototypes.to(z.device, z.dtype).detach()
    total = z.new_zeros(())
    for c in torch.unique(targets).tolist():
        is_c = targets == c
        same, other = z[is_c], z[~is_c]
        rivals = prototypes[torch.arange(len(prototypes), device=z.device) != c]
        proxies = torch.cat([same.detach(), prototypes[c : c + 1]])  # pseudo-prototypes, then the prototype

        # log P(c | x_i; u) = logsigmoid(x_i.u / T - logsumexp_k x_i.p_k / T)
        log_p = F.logsigmoid(same @ proxies.T / T - torch.logsumexp(same @ rivals.T / T, dim=1, keepdim=True))
        n = len(same)
        self_pairs = torch.zeros_like(log_p, dtype=torch.bool)
        self_pairs[torch.arange(n), torch.arange(n)] = True  # a sample is no proxy of itself
        attractor = (torch.logsumexp(log_p.masked_fill(self_pairs, -math.inf), dim=1) - math.log(n)).sum()

        repellor = z.new_zeros(())
        if len(other):
            # log(1 - P(c | x_j; u)) = logsigmoid(-(x_j.u / T - logsumexp_k x_j.p_k / T))
            log_not = F.logsigmoid(torch.logsumexp(other @ rivals.T / T, dim=1, keepdim=True) - other @ proxies.T / T)
            repellor = (torch.logaddexp(log_not[:, :-1], log_not[:, -1:]) - math.log(2)).sum()
        total = total - attractor - repellor
    return total / len(targets)


def update_prototypes(prototypes: Tensor, sums: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """The prototypes after one batch: ``normalize(alpha * p_c + (1 - alpha) * normalize(mean_c))``.

    ``mean_c`` is the mean embedding of the batch's samples of class ``c`` (``sums[c] / counts[c]``);
    classes absent from the batch keep their prototype.

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> update_prototypes(p, torch.tensor([[0.0, 2.0], [0.0, 0.0]]), torch.tensor([2, 0]), 0.5).tolist()
        [[0.7071067690849304, 0.7071067690849304], [0.0, 1.0]]
    """
    seen = counts > 0
    means = F.normalize(sums[seen] / counts[seen].unsqueeze(1).to(sums.dtype), dim=1)
    updated = prototypes.clone()
    updated[seen] = F.normalize(alpha * prototypes[seen] + (1 - alpha) * means.to(prototypes.dtype), dim=1)
    return updated


def prototype_scores(embeddings: Tensor, prototypes: Tensor, T: float) -> Tensor:
    """Class probabilities of the nearest-prototype classifier: ``softmax(cos(x, p_c) / T)``.

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> prototype_scores(torch.tensor([[3.0, 0.0]]), p, T=1.0).argmax(1).tolist()
        [0]
    """
    z = F.normalize(embeddings.float(), dim=1)
    return torch.softmax(z @ prototypes.to(z.device, z.dtype).T / T, dim=1)


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}`: expected a number in [0, 1], got {type(value).__name__} {value!r}.")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}`: expected a number in [0, 1], got {value!r}.")
    return float(value)


def _check_temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`T`: expected a positive number, got {type(value).__name__} {value!r}.")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"`T`: expected a positive finite number, got {value!r}.")
    return float(value)


class CoPE(ContinualCallback):
    """Continual Prototype Evolution: learn an embedding online, classify by the nearest class prototype.

    De Lange & Tuytelaars, "Continual Prototype Evolution: Learning Online from Non-Stationary
    Data Streams", ICCV 2021 (as Avalanche's ``CoPEPlugin``). The model's output IS the
    embedding (``p_size`` wide; CoPE L2-normalises it, as Avalanche appends an L2 normalisation
    to the last layer), and every class has a prototype in that space:

    * **loss**: the task loss is replaced by the pseudo-prototypical proxy loss
      (:func:`ppp_loss`, temperature ``T``) of the batch, memory samples included;
    * **prototypes**: after every training step each class of the batch moves its prototype
      towards the batch's mean embedding of that class, ``p_c <- normalize(alpha * p_c + (1 -
      alpha) * normalize(mean))`` (:func:`update_prototypes`, with the embeddings the step's
      forward pass produced; summed across processes under DDP). All ``num_classes`` prototypes
      exist from the start, random unit vectors from ``seed`` (Avalanche's static
      initialisation); in an online stream with one step per mini-experience (the paper's and
      Avalanche's protocol) this is Avalanche's update after every experience;
    * **memory**: a class-balanced memory (``storage``) is offered each mini-experience's
      samples when it ends in an online stream (:func:`~lightning_cl.benchmarks.online`), each
      experience's otherwise, and every batch is followed by ``memory_batch_size`` memory
      samples (read from the memory as it is at each step in an online stream);
    * **evaluation**: a sample's scores are ``softmax(cos(x, p_c) / T)`` over the classes
      (:func:`prototype_scores`): the nearest prototype wins.

    Under DDP each process computes the PPP loss on its share of the batch (its pairs of
    samples; DDP averages the gradients), while every process moves the prototypes with the
    embeddings of all processes, so the prototypes agree everywhere.

    The user's ``training_step`` still runs (its loss is replaced), so it must accept the
    ``p_size``-wide output; ``ContinualModule`` also checks that the model has at least as many
    outputs as class ids, so ``p_size`` must be at least ``num_classes``.

    Args:
        memory_size: the most samples kept in the replay memory (a hard bound).
        num_classes: the number of classes of the stream (one prototype each, at least 2).
        p_size: the embedding size: the width of the model's output.
        alpha: momentum of the prototypes' moving average, in [0, 1].
        T: temperature of the PPP loss and of the evaluation softmax.
        memory_batch_size: memory samples per batch (defaults to the datamodule's batch size).
        storage: the memory's storage policy (see :class:`~lightning_cl.callbacks.Replay`).
        seed: seed of the prototypes' initialisation and of the memory's selection.

    Raises:
        ValueError: at the start of training, if the model's output is not ``p_size`` wide or the
            stream has more classes than ``num_classes``.

    Example:
        >>> import lightning as L
        >>> cope = CoPE(memory_size=2000, num_classes=10, p_size=32, alpha=0.99, T=0.1)
        >>> tuple(cope.prototypes.shape), round(float(cope.prototypes.norm(dim=1).min()), 4)
        ((10, 32), 1.0)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[cope], logger=False)
    """

    def __init__(
        self,
        memory_size: int,
        num_classes: int,
        p_size: int,
        alpha: float = 0.99,
        T: float = 0.1,
        memory_batch_size: int | None = None,
        storage: str | Buffer = "class_balanced",
        seed: int = 0,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes`: expected an integer of at least 2, got {num_classes!r}.")
        self.p_size = positive_int(p_size, "p_size")
        self.alpha = _check_fraction(alpha, "alpha")
        self.T = _check_temperature(T)
        if memory_batch_size is not None:
            positive_int(memory_batch_size, "memory_batch_size")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed`: expected an integer, got {type(seed).__name__} {seed!r}.")
        self.buffer = make_buffer(storage, memory_size, "random", seed, "CoPE")
        self.memory_size = self.buffer.memory_size
        self.num_classes = num_classes
        self.memory_batch_size = memory_batch_size
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = F.normalize(torch.rand(num_classes, p_size, generator=generator) * 2 - 1, dim=1)
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, num_classes=self.num_classes, p_size=self.p_size)

    @property
    def _key(self) -> str:
        return f"cope_{id(self)}"

    # ------------------------------------------------------------------------------ training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ContinualModule):
            return
        dm = pl_module.datamodule
        if dm.num_classes > self.num_classes:
            raise ValueError(
                f"`num_classes`: CoPE keeps {self.num_classes} prototypes, but the stream has {dm.num_classes} classes."
            )
        with probing(pl_module.module):
            sample = sample_batch(dm.train_stream[dm.current_experience].dataset, pl_module.device)
            width = pl_module.predict_logits(sample).shape[-1]
        self._check_width(width)

    def _check_width(self, width: int) -> None:
        if width != self.p_size:
            raise ValueError(
                f"`p_size`: CoPE's prototypes have {self.p_size} dimensions, but the model's output (its embedding) "
                f"has {width}."
            )

    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        memory = memory_view(self.buffer, datamodule)
        if memory is None:
            return {}
        return {self._key: JointData(memory, self.memory_batch_size or datamodule.batch_size)}

    def prepare_batch(self, pl_module: ContinualModule, batch: Any, extra: Mapping[str, Any]) -> Any:
        memory = extra.get(self._key)
        return batch if memory is None or not len(memory[0]) else cat_batches(batch, memory)

    def task_loss(self, step: TrainingStep) -> Tensor | None:
        logits = step.logits
        self._check_width(logits.shape[-1])
        z = F.normalize(logits.float(), dim=1)
        targets = step.batch[1]
        self.prototypes = self.prototypes.to(z.device)
        with torch.no_grad():
            sums = torch.zeros_like(self.prototypes).index_add_(0, targets, z.detach())
            counts = torch.bincount(targets, minlength=self.num_classes).to(z.dtype)
            self._sums = sums if self._sums is None else self._sums + sums
            self._counts = counts if self._counts is None else self._counts + counts
        return ppp_loss(z, targets, self.prototypes, self.T)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._sums is None or self._counts is None:
            return
        # every rank moves the prototypes by the embeddings of all ranks' batches
        sums = trainer.strategy.reduce(self._sums, reduce_op="sum")
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum")
        self.prototypes = update_prototypes(self.prototypes, sums, counts, self.alpha)
        self._sums, self._counts = None, None

    # ------------------------------------------------------------------------------ memory
    def on_mini_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, mini: Experience) -> None:
        self.buffer.update(mini_candidates(pl_module.datamodule, mini))

    def on_experience_end(self, trainer: L.Trainer, pl_module: ContinualModule, experience: Experience) -> None:
        if not is_online(pl_module.datamodule):
            self.buffer.update(Candidates.of_experience(experience))

    # ---------------------------------------------------------------------------- evaluation
    def eval_logits(self, pl_module: ContinualModule, batch: Any, logits: Tensor) -> Tensor | None:
        self._check_width(logits.shape[-1])
        return prototype_scores(logits, self.prototypes, self.T)

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "prototypes": self.prototypes.detach().cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
        prototypes = state_dict.get("prototypes")
        if prototypes is not None:
            prototypes = torch.as_tensor(prototypes, dtype=torch.float32)
            if tuple(prototypes.shape) != (self.num_classes, self.p_size):
                raise ValueError(
                    f"CoPE.load_state_dict: the saved prototypes have shape {tuple(prototypes.shape)}, this CoPE "
                    f"keeps ({self.num_classes}, {self.p_size}) (num_classes, p_size)."
                )
            self.prototypes = prototypes
