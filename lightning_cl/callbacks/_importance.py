"""Shared machinery of the importance-weighted quadratic penalties (EWC, SI, MAS, RWalk).

Three pieces:

* **Per-sample gradient statistics** (:func:`per_sample_grad_stats`): the sum over samples of
  ``f(per-sample gradient)`` with ``f`` the square (a Fisher diagonal) or the absolute value (MAS),
  computed batch by batch, never sample by sample. The general path is ``torch.func``:
  ``vmap(grad(functional_call(...)))`` over the samples of a batch. Parameters of ``nn.Linear``
  layers take an exact shortcut: their per-sample gradient is the outer product ``g_b x_b^T`` of
  the gradient at the layer's output and its input, and ``f`` is multiplicative
  (``f(g x) = f(g) f(x)``), so ``sum_b f(g_b x_b^T) = f(G)^T f(X)``: one matrix product, without
  materialising ``B x out x in`` per-sample gradients (on a CPU that is ~60x faster for an MLP).
  The shortcut assumes what eval mode gives: a sample's loss depends on its own row only, and a
  sample passes through a layer as at most one row (a layer called twice, or on ``[B, T, F]`` or
  ``[B * T, F]`` inputs, is detected and takes the ``torch.func`` path).
* **Sharding and reduction** (:func:`experience_importance`): under ``strategy="ddp"`` each rank
  takes the samples ``rank::world_size`` of the experience and the sums and counts are summed
  across ranks with ``trainer.strategy.reduce`` (a no-op on one process), so every rank ends with
  the same importance, the one a single process would compute.
* **The penalty** ``sum_k sum_p I_k[p] * (theta[p] - anchor_k[p]) ** 2`` (:func:`quadratic_penalty`)
  and its gradient ``2 * lambda * I * (theta - anchor)`` (:func:`add_penalty_gradients`), applied
  on the overlapping shape: a parameter that grew since (a classifier with new rows) keeps the
  penalty on its old rows and none on the new ones.

It also holds the bookkeeping the four callbacks share: argument checks, their tensor state
(``state_dict``, ``load_state_dict``, the move to the model's device), the penalty as a loss term
(:func:`penalty_loss_terms`) and, for the path-integral methods (SI, RWalk), the optimizer step in
flight (:class:`OptimizerStep`) and the path it adds to (:func:`accumulate_path`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset

from lightning_cl.callbacks._common import cpu_copy
from lightning_cl.core.callback import TrainingStep
from lightning_cl.core.data import collate_fn_of

Statistic = Literal["square", "abs"]
SampleLosses = Callable[[nn.Module, Any], Tensor]
"""``fn(model, batch) -> Tensor[B]``: one loss per sample of an ``(x, y[, t])`` batch."""
Terms = Sequence[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]]
"""``[(importance, anchor), ...]``: the penalty is summed over the pairs, each keyed by parameter name."""

APPLY_MODES = ("loss", "grad")
# elements of per-sample gradients materialised at once on the torch.func path (fp32: 128 MiB)
_VMAP_BUDGET = 2**25
_STATISTICS: dict[str, Callable[[Tensor], Tensor]] = {"square": torch.square, "abs": torch.abs}


# ---------------------------------------------------------------------------------- arguments
def check_non_negative(value: Any, name: str) -> float:
    """``value`` as a float, or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}`: expected a non-negative number, got {type(value).__name__} {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}`: expected a non-negative number, got {value!r}.")
    return float(value)


def check_positive(value: Any, name: str) -> float:
    """``value`` as a float ``> 0``, or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}`: expected a positive number, got {type(value).__name__} {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}`: expected a positive number, got {value!r}.")
    return float(value)


def check_fraction(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1], or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}`: expected a number in [0, 1], got {type(value).__name__} {value!r}.")
    if not 0 <= value <= 1:
        raise ValueError(f"`{name}`: expected a number in [0, 1], got {value!r}.")
    return float(value)


def check_apply(value: Any) -> str:
    """The penalty form: ``"loss"`` (a loss term) or ``"grad"`` (added to the gradients)."""
    if value not in APPLY_MODES:
        raise ValueError(f"`apply`: expected one of {list(APPLY_MODES)}, got {value!r}.")
    return str(value)


def check_batch_size(value: Any) -> int | None:
    """``None`` or a positive int, or a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`batch_size`: expected a positive integer or None, got {value!r}.")
    return value


# ------------------------------------------------------------------------------- parameters
def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The parameters the optimizer can move, by name (frozen ones carry no penalty: they do not move)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def overlap(a: torch.Size, b: torch.Size) -> tuple[slice, ...] | None:
    """The leading region two shapes share (``None`` if their number of dimensions differ)."""
    if len(a) != len(b):
        return None
    return tuple(slice(0, min(m, n)) for m, n in zip(a, b))


def pad_to(tensor: Tensor, shape: torch.Size) -> Tensor:
    """``tensor`` on the leading region of a zero tensor of ``shape`` (an importance of a grown parameter)."""
    if tensor.shape == shape:
        return tensor
    out = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    region = overlap(tensor.shape, shape)
    if region is not None:
        out[region] = tensor[region]
    return out


def snapshot(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies of the parameters."""
    return {name: p.detach().clone() for name, p in params.items()}


def to_device(tensors: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The tensors on ``device`` (no copy for those already there)."""
    return {name: t.to(device) for name, t in tensors.items()}


def load_tensors(state: Any) -> dict[str, Tensor]:
    """A ``{name: tensor}`` dict read from a ``state_dict`` (``{}`` when absent)."""
    return {str(name): torch.as_tensor(t) for name, t in (state or {}).items()}


# A callback's tensor state is a few ``{name: tensor}`` dicts held in attributes (``"_anchor"``);
# its state_dict key is the attribute's name without the leading underscore (``"anchor"``).
def tensors_state(owner: object, attributes: Iterable[str]) -> dict[str, dict[str, Tensor]]:
    """``{key: CPU copies}`` of the dicts held in ``owner``'s ``attributes``, for ``state_dict``."""
    return {name.lstrip("_"): cpu_copy(getattr(owner, name)) for name in attributes}


def load_tensors_state(owner: object, attributes: Iterable[str], state_dict: Mapping[str, Any]) -> None:
    """Set ``owner``'s ``attributes`` from a ``state_dict`` written by :func:`tensors_state` (``{}`` if absent)."""
    for name in attributes:
        setattr(owner, name, load_tensors(state_dict.get(name.lstrip("_"))))


def move_tensors_state(owner: object, attributes: Iterable[str], device: torch.device) -> None:
    """Move the dicts held in ``owner``'s ``attributes`` to ``device`` (no copy for tensors already there)."""
    for name in attributes:
        setattr(owner, name, to_device(getattr(owner, name), device))


# ---------------------------------------------------------------------------------- penalty
def quadratic_penalty(params: Mapping[str, Tensor], terms: Terms) -> Tensor:
    """``sum_k sum_p I_k[p] * (theta[p] - anchor_k[p]) ** 2`` over the overlapping shapes.

    Parameters absent from ``params`` (or with another number of dimensions) carry no penalty.
    """
    device = next(iter(params.values())).device if params else None
    total = torch.zeros((), device=device)
    for importance, anchor in terms:
        for name, weight in importance.items():
            p = params.get(name)
            region = None if p is None else overlap(weight.shape, p.shape)
            if p is None or region is None:
                continue
            total = total + (weight[region] * (p[region] - anchor[name][region]).square()).sum()
    return total


def penalty_gradient(name: str, p: Tensor, terms: Terms, scale: float) -> Tensor | None:
    """Gradient of ``scale * quadratic_penalty`` with respect to parameter ``name`` (``None`` if it has no penalty)."""
    out: Tensor | None = None
    theta = p.detach()
    for importance, anchor in terms:
        weight = importance.get(name)
        region = None if weight is None else overlap(weight.shape, p.shape)
        if weight is None or region is None:
            continue
        if weight.shape == p.shape:  # the usual case: no slicing, no zero-filled buffer
            g = (scale * weight) * (2 * (theta - anchor[name]))
            out = g if out is None else out + g
            continue
        if out is None:
            out = torch.zeros_like(p)
        # the same operations autograd performs on the loss form, in the same order
        out[region] += (scale * weight[region]) * (2 * (theta[region] - anchor[name][region]))
    return out


def merge_terms(terms: Terms) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
    """One ``(importance, anchor)`` pair and a constant with the same penalty as several pairs.

    ``sum_k I_k (theta - a_k) ** 2 = S (theta - a) ** 2 + c`` with ``S = sum_k I_k``,
    ``a = sum_k I_k a_k / S`` and ``c`` what is left, which depends on no parameter: the same
    value and gradient for one pair's cost, however many experiences were consolidated.
    Computed in float64; tensors of a grown parameter are zero-padded to its largest shape.
    """
    shapes: dict[str, torch.Size] = {}
    for importance, _ in terms:
        for name, weight in importance.items():
            known = shapes.get(name)
            if known is None or len(known) != weight.dim():
                shapes.setdefault(name, weight.shape)
            else:
                shapes[name] = torch.Size(max(m, n) for m, n in zip(known, weight.shape))
    total: dict[str, Tensor] = {}
    moment: dict[str, Tensor] = {}
    constant = 0.0
    for importance, anchor in terms:
        for name, weight in importance.items():
            if weight.dim() != len(shapes[name]):
                continue
            w = pad_to(weight.double(), shapes[name])
            a = pad_to(anchor[name].double(), shapes[name])
            total[name] = total[name] + w if name in total else w
            moment[name] = moment[name] + w * a if name in moment else w * a
            constant += float((w * a.square()).sum())
    merged_anchor = {}
    for name, weight in total.items():
        positive = weight > 0
        mean = torch.where(positive, moment[name] / torch.where(positive, weight, 1.0), 0.0)
        constant -= float((weight * mean.square()).sum())
        dtype = next(imp[name].dtype for imp, _ in terms if name in imp)
        merged_anchor[name] = mean.to(dtype)
        total[name] = weight.to(dtype)
    return total, merged_anchor, constant


def add_penalty_gradients(params: Mapping[str, Tensor], terms: Terms, scale: float) -> None:
    """Add the penalty's gradient to ``p.grad``: the penalty applied as a gradient.

    Called in ``on_before_optimizer_step``, where gradients are final, synced and unscaled. A
    step without any gradient (the user's ``training_step`` skipped the batch) gets no penalty,
    as in the loss form; a parameter without a gradient in a real step gets one (the loss form
    would give it one too).
    """
    trainable = {name: p for name, p in params.items() if p.requires_grad}
    if all(p.grad is None for p in trainable.values()):
        return
    for name, p in trainable.items():
        g = penalty_gradient(name, p, terms, scale)
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad += g


def penalty_loss_terms(
    step: TrainingStep, key: str, apply: str, scale: float, terms: Terms, constant: float = 0.0
) -> dict[str, Tensor]:
    """``{key: scale * (quadratic_penalty(params, terms) + constant)}`` for the step's parameters by name.

    The value of ``loss_terms`` (``{}`` while there are no terms): a loss term in the loss form
    (``apply="loss"``); in the gradient form it is computed without a graph and only logged, its
    gradient is added in ``on_before_optimizer_step``.
    """
    if not terms:
        return {}
    params = dict(step.module.module.named_parameters())
    # the gradient form: the gradient is added in on_before_optimizer_step; logged only
    with nullcontext() if apply == "loss" else torch.no_grad():
        penalty = quadratic_penalty(params, terms)
        return {key: scale * (penalty + constant if constant else penalty)}


def loss_scale(trainer: L.Trainer) -> float | None:
    """The AMP gradient scaler's current scale (``None`` without one).

    A fp16 step whose gradients overflow is skipped by the scaler, which then lowers its scale:
    comparing the scale before and after the optimizer step tells a skipped step (whose
    gradients hold inf or NaN) from a real one. Reading it syncs with the device, once per step,
    and only under a scaler.
    """
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())


def task_gradients(params: Mapping[str, Tensor], terms: Terms, scale: float, applied: bool) -> dict[str, Tensor]:
    """The gradients without this method's own penalty: ``p.grad`` minus the penalty's gradient.

    Path-integral methods (SI, RWalk) weigh parameter moves by the gradient of the loss they are
    protecting, not of their own penalty. When the penalty is a loss term (``applied``) its exact
    gradient is known in closed form and subtracted; in the gradient form it is read before the
    penalty is added. Parameters without a gradient are left out.
    """
    grads = {}
    for name, p in params.items():
        if p.grad is None:
            continue
        g = p.grad.detach().clone()
        if applied:
            penalty = penalty_gradient(name, p, terms, scale)
            if penalty is not None:
                g -= penalty
        grads[name] = g
    return grads


class OptimizerStep:
    """The optimizer step in flight, for the path-integral methods (SI, RWalk).

    :meth:`record` (in ``on_before_optimizer_step``) keeps the step's gradient without the
    method's own penalty (:func:`task_gradients`) and the parameters before the step, then adds
    the penalty's gradient in the gradient form. :meth:`finish` (in ``on_train_batch_end``) hands
    them back once the step is known to have happened: not for a batch without an optimizer step
    (gradient accumulation), nor for a step the AMP gradient scaler skipped.
    """

    def __init__(self) -> None:
        self.grads: dict[str, Tensor] | None = None
        self.before: dict[str, Tensor] = {}
        self.scale: float | None = None

    def record(self, trainer: L.Trainer, params: Mapping[str, Tensor], terms: Terms, scale: float, apply: str) -> None:
        """Read the step's task gradient and parameters; in the gradient form, add the penalty's gradient."""
        self.grads = task_gradients(params, terms, scale, applied=apply == "loss")
        self.before = {name: params[name].detach().clone() for name in self.grads}
        self.scale = loss_scale(trainer)
        if apply == "grad" and terms:
            add_penalty_gradients(params, terms, scale)

    def finish(self, trainer: L.Trainer) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        """``(task gradients, parameters before the step)`` of the step just made, or ``None`` if there was none."""
        grads, before = self.grads, self.before
        self.clear()
        if grads is None:  # no optimizer step in this batch (gradient accumulation)
            return None
        scale = loss_scale(trainer)
        if scale is not None and self.scale is not None and scale < self.scale:
            return None  # the AMP scaler skipped the step: inf/NaN gradients
        return grads, before

    def clear(self) -> None:
        """Forget the step in flight."""
        self.grads, self.before = None, {}


def accumulate_path(
    path: dict[str, Tensor], grads: Mapping[str, Tensor], before: Mapping[str, Tensor], params: Mapping[str, Tensor]
) -> None:
    """``path[p] -= g * (theta_after - theta_before)``: the first-order loss change of one step, per parameter.

    A parameter seen for the first time, or grown since, starts from zero; one absent from
    ``params`` is left out.
    """
    with torch.no_grad():
        for name, g in grads.items():
            p = params.get(name)
            if p is None:
                continue
            total = path.get(name)
            if total is None or total.shape != p.shape:
                total = path[name] = torch.zeros_like(p)
            total -= g * (p - before[name])


# ------------------------------------------------------------------ per-sample statistics
@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _Objective(nn.Module):
    """``fn(model, batch).sum()`` as a module, so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, fn: SampleLosses) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Tensor:
        return self.fn(self.model, batch).sum()


def _linear_layers(model: nn.Module, params: Mapping[str, Tensor]) -> dict[nn.Linear, dict[str, str]]:
    """Linear layers whose parameters can take the outer-product shortcut: ``{layer: {"weight": name, ...}}``."""
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    by_id = {id(p): name for name, p in params.items()}
    layers: dict[nn.Linear, dict[str, str]] = {}
    for module in model.modules():
        # a subclass with its own forward may not compute x @ W^T + b
        if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
            continue
        names = {}
        for kind in ("weight", "bias"):
            p = getattr(module, kind)
            # a tied parameter's gradient sums several outer products: not a single one
            if p is not None and id(p) in by_id and owners[id(p)] == 1:
                names[kind] = by_id[id(p)]
        if names:
            layers[module] = names
    return layers


def _factorized_batch(
    model: nn.Module,
    batch: Any,
    sample_losses: SampleLosses,
    layers: Mapping[nn.Linear, Mapping[str, str]],
    f: Callable[[Tensor], Tensor],
    sums: dict[str, Tensor],
) -> set[str]:
    """Add the batch's statistics of the linear layers' parameters; return the names it could not handle."""
    calls: dict[nn.Linear, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        calls[module].append((inputs[0].detach(), output))  # type: ignore[index]

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        losses = sample_losses(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    leftover: set[str] = set()
    used: list[tuple[nn.Linear, Tensor, Tensor]] = []
    size = len(batch[0])
    for layer, seen in calls.items():
        # one call, at most one row per sample: each sample's gradient is one outer product
        if len(seen) == 1 and seen[0][0].dim() == 2 and len(seen[0][0]) <= size and seen[0][1].requires_grad:
            used.append((layer, *seen[0]))
        elif seen:  # called twice, or on [B, T, F] inputs: the gradient is a sum of outer products
            leftover.update(layers[layer].values())
    if not used:
        return leftover
    output_grads = torch.autograd.grad(losses.sum(), [out for _, _, out in used], allow_unused=True)
    for (layer, x, _), g in zip(used, output_grads):
        if g is None:
            continue
        names = layers[layer]
        fg = f(g.detach())
        if "weight" in names:
            sums[names["weight"]] += fg.T.to(x.dtype) @ f(x)
        if "bias" in names:
            sums[names["bias"]] += fg.sum(0)
    return leftover


def _vmap_batch(
    objective: _Objective,
    batch: Any,
    names: Sequence[str],
    params: Mapping[str, Tensor],
    f: Callable[[Tensor], Tensor],
    sums: dict[str, Tensor],
) -> None:
    """Add the batch's statistics of the parameters ``names`` with ``torch.func`` per-sample gradients."""
    chosen = {f"model.{name}": params[name].detach() for name in names}

    def one_sample(weights: dict[str, Tensor], sample: Any) -> Tensor:
        return functional_call(objective, weights, ([s.unsqueeze(0) for s in sample],))

    per_sample = vmap(grad(one_sample), in_dims=(None, 0))
    size = len(batch[0])
    chunk = max(1, _VMAP_BUDGET // max(1, sum(t.numel() for t in chosen.values())))
    for start in range(0, size, chunk):
        part = [t[start : start + chunk] for t in batch]
        grads = per_sample(chosen, part)
        for name in names:
            sums[name] += f(grads[f"model.{name}"]).sum(0)


def per_sample_grad_stats(
    model: nn.Module,
    batches: Iterable[Any],
    sample_losses: SampleLosses,
    statistic: Statistic,
    params: Mapping[str, Tensor] | None = None,
    factorize: bool = True,
) -> tuple[dict[str, Tensor], int]:
    """Sum over all samples of ``statistic(d loss_b / d theta)`` and the number of samples.

    Args:
        model: the network (put it in eval mode first: the samples must not interact).
        batches: ``(x, y[, t])`` batches, already on the model's device.
        sample_losses: ``fn(model, batch) -> Tensor[B]``, one loss per sample.
        statistic: ``"square"`` (empirical Fisher) or ``"abs"`` (MAS).
        params: the parameters to differentiate, by name (default: the trainable ones).
        factorize: use the exact outer-product shortcut for ``nn.Linear`` layers; ``False`` puts
            every parameter through ``torch.func`` (the reference the shortcut is tested against).

    Returns:
        ``({name: sum over samples}, number of samples)``.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> batch = [torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])]
        >>> ce = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
        >>> sums, count = per_sample_grad_stats(model, [batch], ce, "square")
        >>> count, sums["weight"].shape
        (5, torch.Size([2, 3]))
        >>> exact, _ = per_sample_grad_stats(model, [batch], ce, "square", factorize=False)
        >>> torch.allclose(sums["weight"], exact["weight"], atol=1e-6)
        True
    """
    if statistic not in _STATISTICS:
        raise ValueError(f"`statistic`: expected one of {list(_STATISTICS)}, got {statistic!r}.")
    f = _STATISTICS[statistic]
    params = trainable_parameters(model) if params is None else dict(params)
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    layers = _linear_layers(model, params) if factorize else {}
    shortcut = {name for names in layers.values() for name in names.values()}
    general = [name for name in params if name not in shortcut]
    objective = _Objective(model, sample_losses)
    count = 0
    with torch.inference_mode(False), torch.enable_grad():
        for batch in batches:
            count += len(batch[0])
            leftover = _factorized_batch(model, batch, sample_losses, layers, f, sums) if layers else set()
            names = general + [name for name in params if name in leftover]
            if names:
                with torch.no_grad():  # the real parameters need no graph; torch.func.grad makes its own
                    _vmap_batch(objective, batch, names, params, f, sums)
    return sums, count


def _shard(size: int, trainer: L.Trainer) -> list[int]:
    """This rank's samples: ``rank::world_size``, every sample on exactly one rank."""
    return list(range(trainer.global_rank, size, trainer.world_size))


def _batches(loader: DataLoader, device: torch.device) -> Iterator[Any]:
    for batch in loader:
        yield move_data_to_device(batch, device)


def reduce_sums(
    trainer: L.Trainer, sums: dict[str, Tensor], count: int, device: torch.device
) -> tuple[dict[str, Tensor], int]:
    """Sum ``sums`` and ``count`` over the ranks (one collective for the tensors, one for the count)."""
    if trainer.world_size == 1:
        return sums, count
    names = list(sums)
    flat = torch.cat([sums[n].reshape(-1) for n in names]) if names else torch.zeros(0, device=device)
    flat = trainer.strategy.reduce(flat, reduce_op="sum")
    total = trainer.strategy.reduce(torch.tensor([float(count)], dtype=torch.float64, device=device), reduce_op="sum")
    out, offset = {}, 0
    for n in names:
        numel = sums[n].numel()
        out[n] = flat[offset : offset + numel].view_as(sums[n])
        offset += numel
    return out, int(total.item())


def experience_importance(
    trainer: L.Trainer,
    model: nn.Module,
    dataset: Dataset,
    sample_losses: SampleLosses,
    statistic: Statistic,
    batch_size: int,
) -> dict[str, Tensor]:
    """Mean over ``dataset`` of ``statistic(per-sample gradient)``, per trainable parameter.

    The model is in eval mode meanwhile (each submodule's mode is restored after). Under several
    processes each rank takes its shard ``rank::world_size`` and the sums and counts are summed
    across ranks, so all ranks return the same tensors. The loader uses the datamodule's
    ``num_workers``.
    """
    params = trainable_parameters(model)
    device = next(iter(params.values())).device if params else torch.device("cpu")
    workers = getattr(getattr(trainer, "datamodule", None), "num_workers", 0)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_shard(len(dataset), trainer),  # type: ignore[arg-type]
        collate_fn=collate_fn_of(dataset),
        num_workers=workers,
    )
    with eval_mode(model):
        sums, count = per_sample_grad_stats(model, _batches(loader, device), sample_losses, statistic, params)
    sums, count = reduce_sums(trainer, sums, count, device)
    return {name: s / max(count, 1) for name, s in sums.items()}


def importance_batch_size(batch_size: int | None, trainer: L.Trainer) -> int:
    """``batch_size``, or the datamodule's evaluation batch size when ``None``."""
    if batch_size is not None:
        return batch_size
    datamodule = trainer.datamodule  # type: ignore[attr-defined]
    size = getattr(datamodule, "eval_batch_size", None) or getattr(datamodule, "batch_size", None)
    if not isinstance(size, int):
        raise TypeError(
            f"`batch_size`: None takes the datamodule's eval_batch_size, but {type(datamodule).__name__} "
            "has none; pass a batch size."
        )
    return size
