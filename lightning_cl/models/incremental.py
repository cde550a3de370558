"""IncrementalClassifier: a linear classifier that grows its outputs with the classes of the stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cl.core.dynamic import DynamicModule
from lightning_cl.core.experience import Experience


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (the same in every process and every run)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _seeded_linear(
    in_features: int,
    out_features: int,
    seed: int,
    *,
    bias: bool = True,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Linear:
    """An ``nn.Linear`` initialised like PyTorch's default (``U(-1/sqrt(in), 1/sqrt(in))``) from ``seed``.

    Layers created mid-stream use this instead of the global RNG, so every DDP rank and a run
    resumed from a checkpoint create the same values, and the training randomness is left untouched.
    """
    # built on the meta device: PyTorch's own initialisation would draw from the global RNG
    layer = nn.Linear(in_features, out_features, bias=bias, device="meta", dtype=dtype).to_empty(
        device=device if device is not None else "cpu"
    )
    generator = torch.Generator().manual_seed(seed)
    bound = in_features**-0.5
    with torch.no_grad():
        layer.weight.copy_(torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator))
        if layer.bias is not None:
            layer.bias.copy_(torch.empty(out_features).uniform_(-bound, bound, generator=generator))
    return layer


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")


def _check_head_arguments(in_features: Any, initial_out_features: Any, masking: Any, mask_value: Any) -> None:
    _check_positive_int("in_features", in_features)
    _check_positive_int("initial_out_features", initial_out_features)
    if not isinstance(masking, bool):
        raise TypeError(f"`masking`: expected a bool, got {type(masking).__name__}.")
    if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float)):
        raise TypeError(f"`mask_value`: expected a float, got {type(mask_value).__name__}.")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed`: expected an int, got {type(seed).__name__}.")


class GrowingLinear(nn.Module):
    """The growing, masked linear layer behind the dynamic heads (not adapted on its own).

    It is a plain ``nn.Module``, not a :class:`DynamicModule`: the heads of
    :class:`~lightning_cl.models.multihead.MultiHeadClassifier` and of
    :class:`~lightning_cl.models.pnn.PNN` are grown by their owner for their own task only, and
    ContinualModule adapts every ``DynamicModule`` it finds.

    Args:
        in_features: size of an input.
        out_features: number of outputs to start with.
        masking: replace the logits of units never trained by ``mask_value``.
        mask_value: the logit of a masked unit.
        seed: seed of the rows added by :meth:`grow`.
        init_seed: seed of the initial layer; ``None`` uses PyTorch's default (global RNG).

    Example:
        >>> import torch
        >>> layer = GrowingLinear(3, 2)
        >>> layer.activate([1])
        >>> layer.grow(4)
        >>> layer(torch.zeros(1, 3)).eq(-1000.0).tolist()
        [[True, False, True, True]]
    """

    active_units: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        masking: bool = True,
        mask_value: float = -1000.0,
        seed: int = 0,
        init_seed: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.masking = masking
        self.mask_value = float(mask_value)
        self.seed = seed
        if init_seed is None:
            self.classifier = nn.Linear(in_features, out_features, device=device, dtype=dtype)
        else:
            self.classifier = _seeded_linear(in_features, out_features, init_seed, device=device, dtype=dtype)
        self.register_buffer("active_units", torch.zeros(out_features, dtype=torch.bool, device=device))

    @property
    def out_features(self) -> int:
        """The current number of outputs."""
        return self.classifier.out_features

    def grow(self, out_features: int) -> None:
        """Grow to ``out_features`` outputs (no-op if it has as many already), keeping the old rows exactly.

        The new layer is created on the old one's device and dtype, with the old ``requires_grad``;
        the new rows are drawn from a generator seeded by ``(seed, out_features)``.
        """
        old = self.classifier
        old_n = old.out_features
        if out_features <= old_n:
            return
        new = _seeded_linear(
            self.in_features,
            out_features,
            _derive_seed(self.seed, out_features),
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        with torch.no_grad():
            new.weight[:old_n] = old.weight
            new.bias[:old_n] = old.bias
        new.requires_grad_(old.weight.requires_grad)
        self.classifier = new
        active = torch.zeros(out_features, dtype=torch.bool, device=self.active_units.device)
        active[:old_n] = self.active_units
        self.active_units = active

    def activate(self, classes: Iterable[int]) -> None:
        """Mark ``classes`` as trained: their logits are no longer masked."""
        index = torch.as_tensor(list(classes), dtype=torch.long, device=self.active_units.device)
        self.active_units[index] = True

    def forward(self, x: Tensor) -> Tensor:
        out = self.classifier(x)
        if self.masking:
            out = out.masked_fill(~self.active_units, self.mask_value)
        return out

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # a checkpoint written after growth holds more rows than a freshly built head: grow first,
        # so that trainer.fit(ckpt_path=...), load_from_checkpoint and load_state_dict all work
        weight = state_dict.get(prefix + "classifier.weight")
        if isinstance(weight, Tensor) and weight.dim() == 2:
            self.grow(weight.shape[0])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"masking={self.masking}, mask_value={self.mask_value}"


class IncrementalClassifier(GrowingLinear, DynamicModule):
    """A linear classifier whose outputs grow with the classes seen so far.

    At the start of every experience (:meth:`adaptation`, called by
    :class:`~lightning_cl.ContinualModule` before ``configure_optimizers`` and before the DDP
    wrap) it grows to ``max(classes seen so far) + 1`` outputs: a new ``nn.Linear`` is created on
    the old one's device and dtype, the old rows (weights and bias) are copied exactly, and the new
    rows are initialised like ``nn.Linear`` from a generator seeded by ``(seed, size)`` (so every
    process, and a run resumed from a checkpoint, creates the same rows). Put one in your own
    LightningModule and it is grown for you; the optimizer your ``configure_optimizers`` creates
    sees the grown parameters.

    It keeps a boolean buffer ``active_units`` of the units trained so far. With ``masking`` the
    logits of units never trained are ``mask_value``, so unseen classes never win the argmax and
    get no probability mass in a softmax. Loading a ``state_dict`` with more outputs grows the layer
    first, so ``trainer.fit(ckpt_path=...)``, ``load_from_checkpoint`` and ``load_state_dict``
    work on a freshly built (smaller) model.

    The parameters are ``classifier.weight`` and ``classifier.bias`` (as in Avalanche's
    ``IncrementalClassifier``), so state keyed by parameter name follows the layer across growth
    (a grown parameter keeps its name and gains rows).

    :meth:`eval_adaptation` grows the layer to the classes of a test experience without marking
    them trained (they stay masked), so the stream evaluation can test classes not trained yet.

    Args:
        in_features: size of an input (the features of the backbone).
        initial_out_features: number of outputs before the first experience.
        masking: replace the logits of units never trained by ``mask_value``.
        mask_value: the logit of a masked unit.
        seed: seed of the rows added by growth.

    Raises:
        ValueError: if ``in_features`` or ``initial_out_features`` is not a positive integer.
        TypeError: if ``masking`` is not a bool, ``mask_value`` not a number or ``seed`` not an int.

    Example:
        >>> import torch
        >>> from lightning_cl import Experience
        >>> data = torch.utils.data.TensorDataset(torch.zeros(1, 4))  # adaptation reads the classes and task label
        >>> head = IncrementalClassifier(in_features=4, initial_out_features=2)
        >>> head.adaptation(Experience(0, data, classes_in_this_experience=(0, 1)))
        >>> head.adaptation(Experience(1, data, classes_in_this_experience=(3, 4)))
        >>> head.out_features, head.active_units.tolist()
        (5, [True, True, False, True, True])
        >>> head(torch.zeros(1, 4))[0, 2].item()
        -1000.0
    """

    def __init__(
        self,
        in_features: int,
        initial_out_features: int = 2,
        masking: bool = True,
        mask_value: float = -1000.0,
        *,
        seed: int = 0,
    ) -> None:
        _check_head_arguments(in_features, initial_out_features, masking, mask_value)
        _check_seed(seed)
        super().__init__(in_features, initial_out_features, masking, mask_value, seed=seed)

    def adaptation(self, experience: Experience) -> None:
        """Grow to the classes of ``experience`` and mark them trained."""
        classes = experience.classes_in_this_experience
        self.grow(max(classes) + 1)
        self.activate(classes)

    def eval_adaptation(self, experience: Experience) -> None:
        """Grow to the classes of the test ``experience``; untrained classes stay masked."""
        self.grow(max(experience.classes_in_this_experience) + 1)
