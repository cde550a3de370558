"""GSS: a replay memory whose samples have gradients pointing in different directions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from lightning_cl.benchmarks._common import positive_int
from lightning_cl.buffers.base import Buffer, Candidates, FeatureFn
from lightning_cl.callbacks._importance import eval_mode
from lightning_cl.callbacks._online import BatchPositions, current_loader, read_samples
from lightning_cl.callbacks._replay import cat_batches
from lightning_cl.core.callback import ContinualCallback, JointData
from lightning_cl.core.data import _mix_seed, targets_of
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.dynamic import forward_logits, forward_takes_task_labels
from lightning_cl.core.experience import Experience, Stream
from lightning_cl.core.module import ContinualModule

FIRST_SCORE = 0.1
"""Score of the samples that enter an empty memory (there is nothing to compare them with)."""


def max_cosine_similarity(gradients: Tensor, memory_gradients: Tensor) -> Tensor:
    """Each gradient's largest cosine similarity to the memory's gradients: ``[N, P], [S, P] -> [N]``.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        >>> memory = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
        >>> max_cosine_similarity(g, memory).tolist()
        [0.7071067690849304, 0.0]
    """
    g, m = gradients.double(), memory_gradients.double()
    cosine = (g @ m.T) / (g.norm(dim=1, keepdim=True) * m.norm(dim=1)).clamp_min(1e-8)
    return cosine.max(dim=1).values.float()


def replacement_weights(scores: Tensor) -> Tensor:
    """How likely each memory slot is to be drawn for replacement: its score rescaled to [0, 1).

    ``(c - min c) / (max c - min c + 0.01)``: the slots most similar to the rest of the memory
    are drawn most often; the least similar one is never drawn.

    Example:
        >>> replacement_weights(torch.tensor([0.5, -0.5, 0.0])).tolist()
        [0.9900990128517151, 0.0, 0.49504950642585754]
    """
    return (scores - scores.min()) / (scores.max() - scores.min() + 0.01)


def replacement_probability(new_scores: Tensor, slot_scores: Tensor) -> Tensor:
    """Probability that a new sample takes a drawn slot: ``(c_slot + 1) / ((c_new + 1) + (c_slot + 1))``.

    Both scores are cosine similarities in [-1, 1]; the sample least similar to the memory is
    the most likely to win.

    Example:
        >>> replacement_probability(torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 1.0])).tolist()
        [1.0, 0.6666666865348816]
    """
    slot, new = slot_scores + 1, new_scores + 1
    return slot / (new + slot).clamp_min(1e-12)


def sample_gradients(model: nn.Module, batch: Sequence[Tensor], group_size: int = 1) -> Tensor:
    """The gradient of the mean cross-entropy of each group of ``group_size`` consecutive samples
    (each sample alone by default) w.r.t. the trainable parameters, flattened: ``[N / group_size, P]``.

    One ``torch.func`` call (``vmap(grad(...))`` over the groups) for the whole batch, which
    never holds more than one gradient per group; a model that ``torch.func`` cannot batch (e.g.
    its ``forward`` calls ``.item()``) takes one backward pass per group.

    Raises:
        ValueError: if the model has no trainable parameters, or ``group_size`` does not divide
            the batch.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"GSS: {type(model).__name__} has no trainable parameters to take gradients of.")
    size = len(batch[0])
    if size % group_size:
        raise ValueError(f"sample_gradients: groups of {group_size} do not divide a batch of {size} samples.")
    takes_task_labels = forward_takes_task_labels(model)
    y = batch[1]
    fields = [batch[0], y, batch[2] if len(batch) > 2 else torch.zeros_like(y)]
    x, y, t = (f.reshape(size // group_size, group_size, *f.shape[1:]) for f in fields)

    def loss(weights: dict[str, Tensor], xg: Tensor, yg: Tensor, tg: Tensor) -> Tensor:
        logits = functional_call(model, weights, (xg, tg) if takes_task_labels else (xg,), strict=False)
        return F.cross_entropy(logits.float(), yg)

    try:
        grads = vmap(grad(loss), in_dims=(None, 0, 0, 0))({name: p.detach() for name, p in named}, x, y, t)
    except RuntimeError:
        return looped_sample_gradients(model, batch, group_size)
    return torch.cat([grads[name].reshape(len(x), -1) for name, _ in named], dim=1)


def looped_sample_gradients(model: nn.Module, batch: Sequence[Tensor], group_size: int = 1) -> Tensor:
    """:func:`sample_gradients` with one backward pass per group."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for start in range(0, len(batch[0]), group_size):
        group = [t[start : start + group_size] for t in batch]
        with torch.enable_grad():
            loss = F.cross_entropy(forward_logits(model, group).float(), group[1])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        )
    return torch.stack(rows)


class _ScoredMemory(Buffer):
    """GSS's memory: slots with a score each (``extras["score"]``), filled first, then replaced in place.

    Example:
        >>> memory = _ScoredMemory(memory_size=2)
        >>> zeros = torch.zeros(3, dtype=torch.long)
        >>> memory.update(Candidates(zeros, torch.arange(3), zeros, zeros), {"score": torch.zeros(3)})
        >>> memory.slots.position.tolist()
        [0, 1]
        >>> memory.replace(torch.tensor([0]), Candidates(zeros[:1], torch.tensor([7]), zeros[:1], zeros[:1]),
        ...                torch.tensor([0.5]))
        >>> memory.slots.position.tolist(), memory.extras["score"].tolist()
        ([7, 1], [0.5, 0.0])
    """

    def update(
        self,
        candidates: Candidates,
        extras: Mapping[str, Tensor] | None = None,
        features: FeatureFn | None = None,
    ) -> None:
        """Keep the candidates (with their ``extras["score"]``) while there is room, in order."""
        pool, merged = self._pool(candidates, extras)
        self._set(pool, merged, torch.arange(min(len(pool), self.memory_size)))

    def replace(self, slots: Tensor, candidates: Candidates, scores: Tensor) -> None:
        """Put ``candidates`` (with their ``scores``) into ``slots``; the other slots stay where they are."""
        pool, merged = self._pool(candidates, {"score": scores})
        keep = torch.arange(len(self))
        keep[slots] = len(self) + torch.arange(len(candidates))
        self._set(pool, merged, keep)


class GSS(ContinualCallback):
    """Gradient-based Sample Selection (greedy): keep the samples whose gradients differ most.

    Aljundi, Lin, Goujaud & Bengio, "Gradient based sample selection for online continual
    learning", NeurIPS 2019: the greedy variant (GSS-Greedy), as Avalanche's
    ``GSS_greedyPlugin`` runs it (after Mai et al.'s online-continual-learning code). The memory
    keeps ``(experience, position)`` slots and a score per slot: the largest cosine similarity
    of the sample's gradient to the gradients of random memory subsets, so a low score marks a
    sample that pulls the model where the rest of the memory does not. At every training step,
    before the update, the incoming batch is offered to the memory:

    * while the memory has room, its first samples enter (as many as fit), each scored against
      ``min(mem_strength, len(memory) // batch)`` (at least one) random memory subsets of one
      batch's size; samples entering an empty memory get the score 0.1;
    * once it is full, the batch enters only if its gradient points away from the memory's (its
      largest cosine similarity to the subsets' gradients is negative). Then one slot per sample
      is drawn without replacement with weights :func:`replacement_weights` of the slots'
      scores, and each sample takes its slot with :func:`replacement_probability`, taking its own
      score with it.

    Gradients are those of the cross-entropy of the model's logits w.r.t. its trainable
    parameters, in eval mode (as Avalanche), per sample through ``torch.func``; a subset's (or
    the batch's) gradient is the mean of its samples'. Every step also replays a memory batch of
    ``memory_batch_size`` samples after the current one, drawn from the memory as it is at that
    step (``num_workers=0`` sees every change; loader workers see the memory as at the start of
    the epoch); the user's ``training_step`` receives an ordinary ``(x, y[, t])`` batch.

    Where each batch's samples sit in their experience (the memory stores positions, not
    copies): a batch does not carry it, so GSS reads it from the loader's sampler, whose order is
    a pure function of ``(seed, experience, epoch)``; batch ``k`` holds entries
    ``[k * batch_size, (k + 1) * batch_size)`` of it. This leaves every batch untouched for the
    other callbacks and the user's step (an extra field would reach every ``prepare_batch``
    before GSS could strip it). The labels of the batch are checked against the positions at
    every step. The samples, from the batch and the memory, are read again by position with the
    ``"eval"`` transforms for scoring. Under DDP the positions of every rank's batch are
    gathered and every rank scores them all, so every rank keeps the same memory.

    A sample offered again in a later epoch may take a second slot, as in Avalanche.

    Differences from Avalanche, deliberate: only the incoming samples are offered to the memory
    (Avalanche also offers the memory samples replayed with them, storing duplicates); the
    scoring passes leave the parameters' ``.grad`` alone (Avalanche's last per-sample gradient is
    added to the update); replay starts as soon as the memory holds samples (Avalanche waits for
    the second experience); and a full memory with fewer positive weights than incoming samples
    (all scores equal, say) draws its slots uniformly, where Avalanche's draw fails.

    Args:
        memory_size: the most samples kept (a hard bound).
        mem_strength: the most random memory subsets whose gradients a sample is compared with.
        memory_batch_size: memory samples replayed per step (defaults to the datamodule's
            ``batch_size``).
        seed: seed of the subsets, draws and replacement decisions.

    Raises:
        ValueError: at the start of training, if the training set is not the experience's own
            dataset (another callback's ``train_dataset`` changed its size, so positions would
            not be the experience's); at a step, if the batch's labels do not match the samples
            at the positions read from the sampler.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=3, callbacks=[GSS(memory_size=300, mem_strength=10)], logger=False)
    """

    def __init__(
        self, memory_size: int, mem_strength: int = 5, memory_batch_size: int | None = None, seed: int = 0
    ) -> None:
        self.mem_strength = positive_int(mem_strength, "mem_strength")
        if memory_batch_size is not None:
            positive_int(memory_batch_size, "memory_batch_size")
        self.buffer = _ScoredMemory(memory_size, seed)
        self.memory_size = self.buffer.memory_size
        self.memory_batch_size = memory_batch_size
        self.seed = seed
        self.steps = 0  # selection steps taken: part of each step's random seed
        self._positions = BatchPositions("GSS")
        self._targets: tuple[int, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(memory_size=self.memory_size, mem_strength=self.mem_strength)

    @property
    def _key(self) -> str:
        return f"gss_{id(self)}"

    # ------------------------------------------------------------------------------ replay
    def joint_datasets(self, datamodule: StreamDataModule, experience: Experience) -> dict[str, JointData]:
        memory = self.buffer.live_dataset(datamodule.train_stream)
        return {self._key: JointData(memory, self.memory_batch_size or datamodule.batch_size)}

    def prepare_batch(self, pl_module: ContinualModule, batch: Any, extra: Mapping[str, Any]) -> Any:
        memory = extra.get(self._key)
        return batch if memory is None or not len(memory[0]) else cat_batches(batch, memory)

    # ------------------------------------------------------------------------------ selection
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ContinualModule):
            return
        dm = pl_module.datamodule
        experience = dm.train_stream[dm.current_experience]
        size = len(current_loader(trainer).dataset)  # type: ignore[arg-type]
        if size != len(experience):
            raise ValueError(
                f"GSS stores the positions of each batch's samples in experience {experience.index}, but the "
                f"training set holds {size} samples, not the experience's {len(experience)}: another callback's "
                "train_dataset changed it (e.g. Replay in concat mode). Draw extra data with joint_datasets instead."
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(pl_module, ContinualModule):
            return
        dm = pl_module.datamodule
        current = batch["current"] if isinstance(batch, Mapping) else batch
        experience = dm.train_stream[dm.current_experience]
        positions = self._positions(trainer, batch_idx, len(current[1]))
        self._check_labels(experience, positions, current[1])
        if trainer.world_size > 1:
            # every rank scores every rank's batch, with the same parameters and draws: one memory
            positions = trainer.strategy.all_gather(positions.to(pl_module.device)).reshape(-1).cpu()
        self.select(pl_module.module, dm.train_stream, Candidates.of_experience(experience, positions))

    def _check_labels(self, experience: Experience, positions: Tensor, labels: Tensor) -> None:
        if self._targets is None or self._targets[0] != experience.index:
            self._targets = (experience.index, targets_of(experience.dataset))
        if not torch.equal(self._targets[1][positions], labels.cpu().long()):
            raise ValueError(
                f"GSS: the labels of the batch are not those of the samples at the positions read from the loader's "
                f"sampler in experience {experience.index}: the batches do not follow the sampler's order, so GSS "
                "cannot tell which samples they hold."
            )

    def select(self, model: nn.Module, stream: Stream, incoming: Candidates) -> None:
        """Offer the ``incoming`` samples (one batch) to the memory, by the greedy rule."""
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.steps))
        self.steps += 1
        n, batch_size = len(self.buffer), len(incoming)
        if n < self.memory_size:
            entering = incoming.select(torch.arange(min(self.memory_size - n, batch_size)))
            if n == 0:
                scores = torch.full((len(entering),), FIRST_SCORE)
            else:
                grads, memory_grads = self._gradients(model, stream, entering, batch_size, generator)
                scores = max_cosine_similarity(grads, memory_grads).cpu()
            self.buffer.update(entering, {"score": scores})
            return
        grads, memory_grads = self._gradients(model, stream, incoming, batch_size, generator)
        if float(max_cosine_similarity(grads.mean(0, keepdim=True), memory_grads)[0]) >= 0:
            return  # the batch pulls along with the memory: nothing new to keep
        slot_scores = self.buffer.extras["score"]
        count = min(batch_size, n)
        weights = replacement_weights(slot_scores)
        if int((weights > 0).sum()) < count:
            weights = torch.ones_like(weights)  # all scores (nearly) equal: draw uniformly
        slots = torch.multinomial(weights, count, replacement=False, generator=generator)
        new_scores = max_cosine_similarity(grads[:count], memory_grads).cpu()
        won = torch.rand(count, generator=generator) < replacement_probability(new_scores, slot_scores[slots])
        if bool(won.any()):
            self.buffer.replace(slots[won], incoming.select(torch.arange(count)[won]), new_scores[won])

    def _gradients(
        self, model: nn.Module, stream: Stream, samples: Candidates, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Per-sample gradients of ``samples`` ``[N, P]``, and of random memory subsets ``[S, P]``."""
        n = len(self.buffer)
        size = min(batch_size, n)
        count = min(self.mem_strength, max(n // batch_size, 1))
        subsets = torch.randperm(n, generator=generator)[: count * size]
        everything = Candidates.cat([samples, self.buffer.slots.select(subsets)])
        data = read_samples(stream, everything, next(model.parameters()).device)
        with eval_mode(model):
            grads = sample_gradients(model, [t[: len(samples)] for t in data])
            # a subset's gradient is that of its mean loss (in eval mode, its samples' mean gradient)
            memory_grads = sample_gradients(model, [t[len(samples) :] for t in data], group_size=size)
        return grads, memory_grads

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict.get("buffer", {}))
        self.steps = int(state_dict.get("steps", 0))
