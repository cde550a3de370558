"""MLP: the reference fully connected backbone."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` per hidden layer, then a linear classifier.

    Args:
        in_features: size of a flattened input (784 for MNIST, 64 for the 8x8 digits).
        num_classes: number of outputs.
        hidden_sizes: width of each hidden layer.
        dropout: dropout probability after each hidden layer (0 disables it).

    Example:
        >>> import torch
        >>> MLP(64, 10, hidden_sizes=(32,))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden_sizes: Sequence[int] = (400, 400), dropout: float = 0.0
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout`: expected a probability in [0, 1), got {dropout!r}.")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
