"""Helpers shared by the replay methods: building buffers, reading samples through the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_cl.benchmarks._common import take
from lightning_cl.buffers.base import Buffer, Candidates, FeatureFn, read_samples
from lightning_cl.buffers.parametric import ClassBalancedBuffer, ExperienceBalancedBuffer, ParametricBuffer
from lightning_cl.buffers.reservoir import ReservoirBuffer
from lightning_cl.buffers.selection import SelectionStrategy
from lightning_cl.core.data import _mix_seed, collate, collate_fn_of, in_group
from lightning_cl.core.dynamic import forward_logits
from lightning_cl.core.experience import Experience, Stream

STORAGES = ("reservoir", "class_balanced", "experience_balanced", "task_balanced")

FeatureExtractor = Callable[[nn.Module, Any], Tensor]
"""``(model, batch) -> features [B, D]``; the default reads the input of the last ``nn.Linear``."""


def make_buffer(
    storage: str | Buffer, memory_size: int, selection: str | SelectionStrategy, seed: int, owner: str
) -> Buffer:
    """A buffer by storage name, or ``storage`` itself when it is already a :class:`Buffer`."""
    if isinstance(storage, Buffer):
        return storage
    if storage == "reservoir":
        if selection != "random":
            raise ValueError(
                f"{owner}: `selection` {selection!r} needs a grouped storage; reservoir keeps a uniform sample."
            )
        return ReservoirBuffer(memory_size, seed)
    if storage == "class_balanced":
        return ClassBalancedBuffer(memory_size, selection, seed=seed)
    if storage == "experience_balanced":
        return ExperienceBalancedBuffer(memory_size, selection, seed=seed)
    if storage == "task_balanced":
        return ParametricBuffer(memory_size, "task", selection, seed=seed)
    raise ValueError(f"{owner}: `storage`: expected one of {list(STORAGES)} or a Buffer, got {storage!r}.")


def is_online(datamodule: object) -> bool:
    """Whether ``datamodule`` is an online stream, whose memories are updated per mini-experience."""
    from lightning_cl.benchmarks.online import OnlineStreamDataModule  # the benchmarks import the core first

    return isinstance(datamodule, OnlineStreamDataModule)


def mini_candidates(datamodule: Any, mini: Experience) -> Candidates:
    """The samples of a mini-experience of an online stream, as positions in its experience."""
    # a mini-experience is a run of consecutive positions of the current experience
    start = mini.index * datamodule.experience_size
    experience = datamodule.train_stream[datamodule.current_experience]
    return Candidates.of_experience(experience, torch.arange(start, start + len(mini)))


def memory_view(buffer: Buffer, datamodule: Any, with_slots: bool = False) -> Dataset | None:
    """What a joint loader draws the memory from: the buffer as it is at each step in an online
    stream (it changes every mini-experience), else its samples as they are now (None if empty)."""
    if is_online(datamodule):
        return buffer.live_dataset(datamodule.train_stream, with_slots)
    return buffer.dataset(datamodule.train_stream, with_slots) if len(buffer) else None


def cat_batches(first: Sequence[Tensor], second: Sequence[Tensor]) -> list[Tensor]:
    """Two ``(x, y[, t])`` batches as one (the memory batch after the current one)."""
    if len(first) != len(second):
        raise ValueError(
            f"Cannot join a batch of {len(first)} fields with a memory batch of {len(second)} fields "
            "(task labels in one stream and not in the other?)."
        )
    return [torch.cat([a, b.to(a.device)]) for a, b in zip(first, second)]


def to_device(batch: Sequence[Tensor], device: torch.device) -> list[Tensor]:
    return [t.to(device) for t in batch]


def map_dataset(
    model: nn.Module, dataset: Dataset, fn: Callable[[nn.Module, list[Tensor]], Tensor], batch_size: int = 512
) -> Tensor:
    """``fn(model, batch)`` over ``dataset`` in order, in eval mode without gradients, on the CPU.

    The samples are read with the dataset's ``"eval"`` transforms (no augmentation): these are
    measurements of the samples, as Avalanche reads them for herding and stored logits.
    """
    dataset = in_group(dataset, "eval")
    collate_fn = collate_fn_of(dataset)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm statistics and dropout: a read, not a training step
    outputs = []
    getitems = getattr(dataset, "__getitems__", None)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):  # type: ignore[arg-type]
            index = list(range(start, min(start + batch_size, len(dataset))))  # type: ignore[arg-type]
            batch = collate_fn(getitems(index)) if getitems else collate_fn([dataset[i] for i in index])
            outputs.append(fn(model, to_device(batch, device)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def logits_of(model: nn.Module, batch: Any) -> Tensor:
    return forward_logits(model, batch)


def last_linear(model: nn.Module, owner: str) -> nn.Linear:
    """The last ``nn.Linear`` of ``model`` (its classifier), whose input are the features."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(
            f"{owner}: cannot find the features of {type(model).__name__}: it has no nn.Linear classifier "
            "whose input to read. Pass `feature_extractor=lambda model, batch: ...` returning [B, D] features."
        )
    return linears[-1]


def penultimate_features(model: nn.Module, batch: Any) -> Tensor:
    """The input of the last ``nn.Linear`` that a forward pass of ``batch`` runs (the classifier).

    The last one *run*, not the last one registered: a model may define its head before its body.
    """
    last_linear(model, "feature extraction")  # a clear error for a model without any
    captured: list[Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        forward_logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise TypeError(
            f"feature extraction: the forward pass of {type(model).__name__} runs none of its nn.Linear layers, "
            "so there is no classifier input to read. Pass `feature_extractor=lambda model, batch: ...` "
            "returning [B, D] features."
        )
    return captured[-1].flatten(1)


def candidate_features(model: nn.Module, stream: Stream, extractor: FeatureExtractor) -> FeatureFn:
    """A buffer's ``features`` function: the candidates read from ``stream`` through ``extractor``."""

    def features(candidates: Candidates) -> Tensor:
        data, order = read_samples(stream, candidates)
        # rows come grouped by experience: put them back in the candidates' order
        return map_dataset(model, data, extractor)[torch.argsort(order)]

    return features


class PatternMemory:
    """GEM / A-GEM's episodic memory: ``patterns_per_experience`` random samples of each experience.

    Held as ``(experience, position)`` slots; the samples are read from the stream once per
    experience and kept stacked on the model's device (they are used at every step).
    """

    def __init__(self, patterns_per_experience: int, seed: int, owner: str) -> None:
        if (
            isinstance(patterns_per_experience, bool)
            or not isinstance(patterns_per_experience, int)
            or patterns_per_experience < 1
        ):
            raise ValueError(
                f"{owner}: `patterns_per_experience`: expected a positive integer, got {patterns_per_experience!r}."
            )
        self.patterns_per_experience = patterns_per_experience
        self.seed = seed
        self.experience = torch.zeros(0, dtype=torch.long)
        self.position = torch.zeros(0, dtype=torch.long)
        self._batches: dict[tuple[int, torch.device], list[Tensor]] = {}

    def __len__(self) -> int:
        return len(self.position)

    def add(self, experience: Experience) -> None:
        """Store random patterns of ``experience`` (replacing any stored before for it)."""
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, experience.index))
        positions = torch.randperm(len(experience), generator=generator)[: self.patterns_per_experience]
        keep = self.experience != experience.index
        self.experience = torch.cat([self.experience[keep], torch.full_like(positions, experience.index)])
        self.position = torch.cat([self.position[keep], positions])
        self._batches = {}

    def experiences(self) -> list[int]:
        return torch.unique(self.experience).tolist()

    def batch(self, stream: Stream, index: int, device: torch.device) -> list[Tensor]:
        """The stored patterns of experience ``index``, as one batch on ``device``."""
        key = (index, device)
        if key not in self._batches:
            experience = stream[index]
            data = take(experience.dataset, self.position[self.experience == index], experience.task_label)
            getitems = getattr(data, "__getitems__", None)
            size = len(data)  # type: ignore[arg-type]
            batch = collate(getitems(list(range(size)))) if getitems else collate([data[i] for i in range(size)])
            self._batches[key] = to_device(batch, device)
        return self._batches[key]

    def state_dict(self) -> dict[str, Any]:
        return {"experience": self.experience.clone(), "position": self.position.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.experience = torch.as_tensor(state_dict.get("experience", torch.zeros(0)), dtype=torch.long)
        self.position = torch.as_tensor(state_dict.get("position", torch.zeros(0)), dtype=torch.long)
        self._batches = {}


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """The parameters' ``.grad`` as one float64 vector (zeros for a parameter without gradient)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double() for p in params])


def write_projection(params: Sequence[Tensor], vector: Tensor) -> None:
    """Copy the flat ``vector`` into the ``.grad`` of the parameters that have one.

    A parameter that this step's loss does not reach (another task's head) keeps ``grad=None``,
    so the optimizer leaves it alone (no weight decay, no momentum step) as in naive training;
    Avalanche's GEM and A-GEM (and the GEM reference code) write the same way.
    """
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            p.grad.copy_(vector[offset : offset + n].view_as(p))
        offset += n


def memory_gradient(model: nn.Module, params: Sequence[Tensor], batch: Sequence[Tensor]) -> Tensor:
    """The flat float64 gradient of the cross-entropy on ``batch`` (no ``.grad`` is touched)."""
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(forward_logits(model, batch).float(), batch[1])
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(grads, params)]
    )
