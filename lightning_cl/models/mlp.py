"""MLP: the reference fully connected backbone."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_cl.models.multihead import MultiHeadClassifier

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _trunk(in_features: int, hidden_sizes: Sequence[int], activation: str, dropout: float) -> tuple[nn.Sequential, int]:
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"`in_features`: expected a positive integer, got {in_features!r}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"`activation`: expected one of {sorted(ACTIVATIONS)}, got {activation!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout`: expected a probability in [0, 1), got {dropout!r}.")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width


class MLP(nn.Module):
    """Flatten, then ``Linear -> activation (-> Dropout)`` per hidden layer, then a linear classifier.

    Args:
        in_features: size of a flattened input (784 for MNIST, 64 for the 8x8 digits).
        num_classes: number of outputs.
        hidden_sizes: width of each hidden layer.
        dropout: dropout probability after each hidden layer (0 disables it).
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.

    Example:
        >>> import torch
        >>> MLP(64, 10, hidden_sizes=(32,))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes`: expected a positive integer, got {num_classes!r}.")
        self.features, width = _trunk(in_features, hidden_sizes, activation, dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class MultiHeadMLP(nn.Module):
    """An MLP trunk shared by all tasks and one head per task (task-incremental learning).

    The heads are a :class:`~lightning_cl.models.MultiHeadClassifier`, created and grown per
    task by the stream (each head has the classes of its task, counted from 0 in
    task-incremental streams). ``forward(x, task_labels)`` routes each sample to its task's head.

    Args:
        in_features: size of a flattened input.
        hidden_sizes: width of each hidden layer of the trunk.
        dropout: dropout probability after each hidden layer.
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.
        initial_out_features: outputs of a new head before it grows to its task's classes.

    Example:
        >>> import torch
        >>> from lightning_cl import Experience
        >>> model = MultiHeadMLP(64, hidden_sizes=(32,))
        >>> data = torch.utils.data.TensorDataset(torch.zeros(1, 64))
        >>> model.classifier.adaptation(Experience(0, data, (0, 1, 2), task_label=0))  # the stream does this
        >>> model(torch.zeros(2, 1, 8, 8), torch.tensor([0, 0])).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        activation: str = "relu",
        initial_out_features: int = 2,
    ) -> None:
        super().__init__()
        self.features, width = _trunk(in_features, hidden_sizes, activation, dropout)
        self.classifier = MultiHeadClassifier(width, initial_out_features=initial_out_features)

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        return self.classifier(self.features(x), task_labels)
