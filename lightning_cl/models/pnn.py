"""PNN: progressive neural networks, one column per task with lateral connections (Rusu et al., 2016)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl.core.dynamic import DynamicModule
from lightning_cl.core.experience import Experience
from lightning_cl.models.incremental import (
    GrowingLinear,
    _check_positive_int,
    _check_seed,
    _derive_seed,
    _seeded_linear,
)
from lightning_cl.models.multihead import _load_current_task, _route, _task_tensor, _tasks_present

_ADAPTERS = ("mlp", "linear")


class LinearAdapter(nn.Module):
    """Linear lateral connections: ``sum_j U^(k:j) h^(j)`` over the earlier columns ``j``.

    Args:
        in_features: width of an earlier column's activations.
        out_features: width of the layer it feeds.
        num_previous: number of earlier columns.
        seed: seed of the initial weights.

    Example:
        >>> import torch
        >>> adapter = LinearAdapter(4, 3, num_previous=2, seed=0)
        >>> adapter([torch.zeros(5, 4), torch.ones(5, 4)]).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_previous: int,
        seed: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            _seeded_linear(in_features, out_features, _derive_seed(seed, j), bias=False, device=device, dtype=dtype)
            for j in range(num_previous)
        )

    def forward(self, previous: list[Tensor]) -> Tensor:
        out = self.lateral[0](previous[0])
        for layer, h in zip(self.lateral[1:], previous[1:]):
            out = out + layer(h)
        return out


class MLPAdapter(nn.Module):
    """The non-linear lateral adapter of the paper (Eq. 2): ``U relu(V (alpha * [h^(1), ..., h^(k-1)]))``.

    ``alpha`` is one learned scalar, initialised to a small random value (``U(0, 0.1)``); ``V``
    projects the concatenated activations of the earlier columns onto the width of one column,
    which keeps the number of lateral parameters in check as columns are added.

    Args:
        in_features: width of an earlier column's activations.
        out_features: width of the layer it feeds.
        num_previous: number of earlier columns.
        seed: seed of the initial weights.

    Example:
        >>> import torch
        >>> adapter = MLPAdapter(4, 3, num_previous=2, seed=0)
        >>> adapter([torch.zeros(5, 4), torch.ones(5, 4)]).shape, adapter.V.in_features
        (torch.Size([5, 3]), 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_previous: int,
        seed: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(_derive_seed(seed, 0))
        alpha = torch.empty(()).uniform_(0.0, 0.1, generator=generator)  # drawn on the CPU, like the generator
        self.alpha = nn.Parameter(alpha.to(device=device, dtype=dtype))
        self.V = _seeded_linear(
            in_features * num_previous, in_features, _derive_seed(seed, 1), device=device, dtype=dtype
        )
        self.U = _seeded_linear(
            in_features, out_features, _derive_seed(seed, 2), bias=False, device=device, dtype=dtype
        )

    def forward(self, previous: list[Tensor]) -> Tensor:
        return self.U(F.relu(self.V(self.alpha * torch.cat(previous, dim=1))))


class PNNColumn(nn.Module):
    """One column: ``num_layers`` ReLU layers, lateral adapters from the earlier columns, a growing head.

    ``laterals[i]`` feeds the outputs of layer ``i`` of the earlier columns into layer ``i + 1`` of
    this one (into the head for the last layer). The first layer has none: its input, ``x``, is the
    same for every column (in the paper ``h_0 = x``).

    Args:
        in_features: size of a flattened input.
        hidden_features: width of every layer.
        num_layers: number of hidden layers.
        num_previous: number of earlier columns (its position in the network).
        adapter: ``"mlp"`` or ``"linear"``.
        out_features: initial number of outputs of the head.
        seed: seed of the initial weights.

    Example:
        >>> column = PNNColumn(8, 16, num_layers=2, num_previous=1, adapter="mlp", out_features=3, seed=0)
        >>> len(column.layers), len(column.laterals), column.head.out_features
        (2, 2, 3)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        num_layers: int,
        num_previous: int,
        adapter: str,
        out_features: int,
        seed: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_previous = num_previous
        kind = MLPAdapter if adapter == "mlp" else LinearAdapter
        self.layers = nn.ModuleList(
            _seeded_linear(
                in_features if i == 0 else hidden_features,
                hidden_features,
                _derive_seed(seed, 0, i),
                device=device,
                dtype=dtype,
            )
            for i in range(num_layers)
        )
        self.laterals = nn.ModuleList(
            kind(hidden_features, hidden_features, num_previous, _derive_seed(seed, 1, i), device=device, dtype=dtype)
            for i in range(num_layers if num_previous else 0)
        )
        head_seed = _derive_seed(seed, 2)
        self.head = GrowingLinear(
            hidden_features,
            out_features,
            seed=head_seed,
            init_seed=_derive_seed(head_seed, -1),
            device=device,
            dtype=dtype,
        )


class PNN(DynamicModule):
    """Progressive neural network: a new column per task, earlier columns frozen, lateral connections.

    Rusu, Rabinowitz, Desjardins, Soyer, Kirkpatrick, Kavukcuoglu, Pascanu & Hadsell,
    "Progressive Neural Networks", arXiv:1606.04671, 2016.

    For task-incremental streams. When an experience of a new task label starts
    (:meth:`adaptation`, called by :class:`~lightning_cl.ContinualModule` before
    ``configure_optimizers`` and the DDP wrap) a column is added: ``num_layers`` ReLU layers of
    ``hidden_features_per_column`` units and a growing classifier head of its own (as
    :class:`~lightning_cl.models.incremental.IncrementalClassifier`, masking classes not trained).
    Layer ``i`` of column ``k`` computes

        ``h_i^(k) = relu(W_i^(k) h_(i-1)^(k) + A_i^(k)(h_(i-1)^(1), ..., h_(i-1)^(k-1)))``

    with ``h_0 = x`` (flattened) and ``A`` a lateral adapter from the earlier columns (none in the
    first layer, whose input is the same for all columns): the paper's MLP adapter
    ``U relu(V (alpha * h^(<k)))`` with a learned scalar ``alpha`` (``adapter="mlp"``), or a sum of
    linear maps (``adapter="linear"``). The head of column ``k`` reads
    ``h_L^(k) + A_(L+1)^(k)(h_L^(<k))``: the lateral connection into the output layer, factored
    through the head so that the head can keep growing.

    At every experience start every column but the current task's is frozen
    (``requires_grad=False``): training a task never changes what an earlier task computes, so
    a PNN cannot forget (and DDP needs no ``find_unused_parameters``). ``forward(x, task_labels)``
    routes each sample to its task's column and head (a batch may mix tasks; narrower heads are
    padded with ``-1000``). An experience whose task already has a column trains that column again.
    For the stream evaluation, :meth:`eval_adaptation` adds the column of a test experience's task
    not trained yet (frozen, every unit of its head masked).

    Differences from Avalanche's ``PNN`` (same arguments): Avalanche puts adapters on the first
    layer (where they only re-read the input), none into the output layer, and one ``alpha`` per
    earlier column drawn from ``N(0, 1)``; with its default ``num_layers=1`` no hidden activation
    is ever passed laterally. Here, as in the paper, hidden activations of earlier columns feed
    every later layer and the output, and ``alpha`` is one small scalar per adapter.

    The columns are created from generators seeded by ``(seed, column)``, not from the global
    RNG, so every process and a resumed run build the same columns; buffers ``column_tasks`` (the
    task of each column) and ``current_task`` make checkpoints restore the columns and the
    freezing into a freshly built PNN.

    Args:
        num_layers: hidden layers per column.
        in_features: size of a flattened input (784 for MNIST).
        hidden_features_per_column: width of the hidden layers of a column.
        adapter: ``"mlp"`` (the paper's adapter) or ``"linear"``.
        seed: seed of the columns.

    Raises:
        ValueError: if a size is not a positive integer or ``adapter`` is unknown; in
            ``forward``, for a task label with no column or inputs of the wrong size.
        TypeError: if ``seed`` is not an int.

    Example:
        >>> import torch
        >>> from lightning_cl import Experience
        >>> data = torch.utils.data.TensorDataset(torch.zeros(1, 4))  # adaptation reads the classes and task label
        >>> pnn = PNN(num_layers=2, in_features=8, hidden_features_per_column=16)
        >>> for k in range(2):
        ...     pnn.adaptation(Experience(k, data, classes_in_this_experience=(0, 1), task_label=k))
        >>> pnn.num_columns, [p.requires_grad for p in pnn.columns[0].parameters()][:1]
        (2, [False])
        >>> pnn(torch.randn(3, 8), torch.tensor([0, 1, 1])).shape
        torch.Size([3, 2])
    """

    column_tasks: Tensor
    current_task: Tensor

    def __init__(
        self,
        num_layers: int = 1,
        in_features: int = 784,
        hidden_features_per_column: int = 100,
        adapter: str = "mlp",
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_positive_int("num_layers", num_layers)
        _check_positive_int("in_features", in_features)
        _check_positive_int("hidden_features_per_column", hidden_features_per_column)
        if adapter not in _ADAPTERS:
            raise ValueError(f"`adapter`: expected one of {list(_ADAPTERS)}, got {adapter!r}.")
        _check_seed(seed)
        self.num_layers = num_layers
        self.in_features = in_features
        self.hidden_features_per_column = hidden_features_per_column
        self.adapter = adapter
        self.seed = seed
        self.columns = nn.ModuleList()
        self._tasks: list[int] = []  # column -> task label, mirrored in the buffer for checkpoints
        self.register_buffer("column_tasks", torch.zeros(0, dtype=torch.long))
        self.register_buffer("current_task", torch.tensor(-1, dtype=torch.long))

    @property
    def num_columns(self) -> int:
        """The number of columns (tasks) so far."""
        return len(self.columns)

    @property
    def tasks(self) -> list[int]:
        """The task label of each column, in column order."""
        return list(self._tasks)

    def _column(self, index: int) -> PNNColumn:
        return cast(PNNColumn, self.columns[index])

    def _add_column(self, task: int, out_features: int) -> PNNColumn:
        reference = self.columns[0] if self.columns else None
        dtype = reference.head.classifier.weight.dtype if isinstance(reference, PNNColumn) else None
        column = PNNColumn(
            self.in_features,
            self.hidden_features_per_column,
            self.num_layers,
            self.num_columns,
            self.adapter,
            out_features,
            _derive_seed(self.seed, self.num_columns),
            device=self.current_task.device,
            dtype=dtype,
        )
        self.columns.append(column)
        self._tasks.append(task)
        self.column_tasks = torch.tensor(self._tasks, dtype=torch.long, device=self.current_task.device)
        return column

    def _head_for(self, experience: Experience) -> GrowingLinear:
        size = max(experience.classes_in_this_experience) + 1
        task = experience.task_label
        if task in self._tasks:
            head = self._column(self._tasks.index(task)).head
            head.grow(size)
        else:
            head = self._add_column(task, max(2, size)).head
        return head

    def _freeze_other_columns(self) -> None:
        current = int(self.current_task)
        for task, column in zip(self._tasks, self.columns):
            column.requires_grad_(task == current)

    def adaptation(self, experience: Experience) -> None:
        """Add a column for a new task (or reuse its column), grow its head, freeze every other column."""
        self._head_for(experience).activate(experience.classes_in_this_experience)
        self.current_task.fill_(experience.task_label)
        self._freeze_other_columns()

    def eval_adaptation(self, experience: Experience) -> None:
        """Add a (frozen) column for a test experience's new task, or grow its head; untrained classes stay masked."""
        self._head_for(experience)
        self._freeze_other_columns()

    def _hidden(self, x: Tensor, last: int) -> list[Tensor]:
        """The last hidden activations of columns ``0..last``."""
        hs = [x] * (last + 1)
        for i in range(self.num_layers):
            new = []
            for k in range(last + 1):
                column = self._column(k)
                z = column.layers[i](hs[k])
                if i > 0 and k > 0:
                    z = z + column.laterals[i - 1](hs[:k])
                new.append(F.relu(z))
            hs = new
        return hs

    def _task_output(self, x: Tensor, task: int) -> Tensor:
        k = self._tasks.index(task)
        hs = self._hidden(x, k)
        column = self._column(k)
        z = hs[k] if k == 0 else hs[k] + column.laterals[-1](hs[:k])
        return column.head(z)

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """Logits ``[B, C]`` of each sample's task column, ``C`` the widest head among the tasks present."""
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"`x`: expected {self.in_features} features per sample (in_features), got {x.shape[1]}.")
        labels = _task_tensor(task_labels, len(x), x.device)
        present = _tasks_present(labels, self._tasks, type(self).__name__, part="column")
        return _route(labels, present, lambda t, rows: self._task_output(x if rows is None else x[rows], t), -1000.0)

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
        # columns added after this PNN was built: add them (each head grows itself on load)
        tasks = state_dict.get(prefix + "column_tasks")
        if isinstance(tasks, Tensor) and tasks.dim() == 1:
            saved = [int(t) for t in tasks.tolist()]
            if saved[: self.num_columns] != self._tasks[: len(saved)]:
                error_msgs.append(
                    f"PNN: the checkpoint's columns are for tasks {saved}, this PNN's for {self._tasks}; "
                    "load it into a PNN built with the same arguments and not adapted to other tasks."
                )
            else:
                for task in saved[self.num_columns :]:
                    weight = state_dict.get(f"{prefix}columns.{self.num_columns}.head.classifier.weight")
                    self._add_column(task, weight.shape[0] if isinstance(weight, Tensor) else 2)
        if _load_current_task(self.current_task, state_dict, prefix):
            self._freeze_other_columns()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, in_features={self.in_features}, "
            f"hidden_features_per_column={self.hidden_features_per_column}, adapter={self.adapter!r}"
        )
