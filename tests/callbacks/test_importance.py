"""Shared machinery of EWC, SI, MAS and RWalk: per-sample statistics, sharding, the penalty and its gradient."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from lightning_cl.callbacks._importance import (
    _shard,
    add_penalty_gradients,
    check_apply,
    experience_importance,
    merge_terms,
    overlap,
    pad_to,
    penalty_gradient,
    per_sample_grad_stats,
    quadratic_penalty,
    task_gradients,
)
from lightning_cl.callbacks.ewc import sample_cross_entropy
from lightning_cl.callbacks.mas import sample_squared_norm
from lightning_cl.core.data import InMemoryDataset


class Tied(nn.Module):
    """One Linear layer applied twice: its per-sample gradient is a sum of two outer products."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.layer(torch.tanh(self.layer(x))))


class Sequence(nn.Module):
    """A Linear layer on ``[B, T, F]`` inputs: its per-sample gradient sums over T."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.view(len(x), 1, 5).expand(len(x), 2, 5) * torch.tensor([1.0, -0.5]).view(1, 2, 1)).sum(1)


class Flattened(nn.Module):
    """A Linear layer on ``[B * T, F]`` rows: two rows per sample, one call."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        rows = torch.cat([x, -0.5 * x], dim=1).view(2 * len(x), 5)
        return self.layer(rows).view(len(x), 2, 3).sum(1)


class MultiHead(nn.Module):
    """A shared trunk and one head per task, routed by the task label of each sample."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(6, 3) for _ in range(2))
        self.scale = nn.Parameter(torch.tensor(1.5))  # a bare parameter: the torch.func path

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        h = self.trunk(x) * self.scale
        out = torch.stack([head(h) for head in self.heads], dim=1)
        return out[torch.arange(len(x)), task_labels]


MODELS: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(5, 3),
    "mlp": lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)),
    "tied": Tied,
    "sequence": Sequence,
    "flattened": Flattened,
    "multihead": MultiHead,
}
LOSSES = {"square": sample_cross_entropy, "abs": sample_squared_norm}


def make_batch(n: int = 7, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, 5, generator=g),
        torch.randint(0, 3, (n,), generator=g),
        torch.randint(0, 2, (n,), generator=g),
    ]


def loop_reference(model: nn.Module, batches: list[list[Tensor]], statistic: str) -> tuple[dict[str, Tensor], int]:
    """The definition, one sample at a time: sum of f(gradient of the sample's own loss)."""
    f = torch.square if statistic == "square" else torch.abs
    sums = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    count = 0
    for batch in batches:
        for i in range(len(batch[0])):
            model.zero_grad()
            LOSSES[statistic](model, [t[i : i + 1] for t in batch]).sum().backward()
            for name, p in model.named_parameters():
                sums[name] += f(p.grad)
            count += 1
    return sums, count


@pytest.mark.parametrize("factorize", [True, False], ids=["shortcut", "torch.func"])
@pytest.mark.parametrize("statistic", ["square", "abs"])
@pytest.mark.parametrize("name", list(MODELS))
def test_per_sample_statistics_match_an_explicit_loop(name: str, statistic: str, factorize: bool) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    batches = [make_batch(7, seed=1), make_batch(4, seed=2)]
    expected, expected_count = loop_reference(model, batches, statistic)
    sums, count = per_sample_grad_stats(model, batches, LOSSES[statistic], statistic, factorize=factorize)  # type: ignore[arg-type]
    assert count == expected_count == 11
    assert sums.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(sums[key], expected[key], rtol=1e-5, atol=1e-6)


def test_frozen_parameters_get_no_statistics() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)
    sums, _ = per_sample_grad_stats(model, [make_batch()], sample_cross_entropy, "square")
    assert set(sums) == {"0.bias", "2.weight", "2.bias"}


def test_unknown_statistic_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"`statistic`: expected one of \['square', 'abs'\], got 'cube'"):
        per_sample_grad_stats(nn.Linear(5, 3), [make_batch()], sample_cross_entropy, "cube")  # type: ignore[arg-type]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_cover_every_sample_once(world_size: int) -> None:
    shards = [_shard(10, SimpleNamespace(world_size=world_size, global_rank=r)) for r in range(world_size)]  # type: ignore[arg-type]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


class TwoRankStrategy:
    """Stands for the all-reduce of a 2-process run: adds what the other rank would contribute."""

    def __init__(self, other: list[Tensor]) -> None:
        self.other = other
        self.ops: list[str] = []

    def reduce(self, tensor: Tensor, reduce_op: str) -> Tensor:
        self.ops.append(reduce_op)
        return tensor + self.other[len(self.ops) - 1].to(tensor.dtype)


def test_experience_importance_shards_and_sums_across_ranks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y, _ = make_batch(11)
    dataset = InMemoryDataset(x, y)
    # what rank 1 of 2 holds: the samples 1, 3, 5, ...
    other, other_count = per_sample_grad_stats(model.eval(), [[x[1::2], y[1::2]]], sample_cross_entropy, "square")
    strategy = TwoRankStrategy([torch.cat([s.reshape(-1) for s in other.values()]), torch.tensor([float(other_count)])])
    rank0 = SimpleNamespace(world_size=2, global_rank=0, strategy=strategy)
    model.train()
    fisher = experience_importance(rank0, model, dataset, sample_cross_entropy, "square", batch_size=4)  # type: ignore[arg-type]
    assert strategy.ops == ["sum", "sum"]
    assert model.training and all(m.training for m in model.modules())  # the mode is restored
    expected, count = loop_reference(model.eval(), [[x, y, y]], "square")
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name] / count, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------- penalty
def test_quadratic_penalty_by_hand_with_a_grown_parameter() -> None:
    params = {
        "w": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        "b": torch.tensor([1.0, -1.0]),
        "new": torch.ones(2),
    }
    importance = {"w": torch.tensor([[1.0, 0.0], [2.0, 0.5]]), "b": torch.tensor([3.0, 1.0]), "gone": torch.ones(1)}
    anchor = {"w": torch.tensor([[0.0, 2.0], [1.0, 0.0]]), "b": torch.tensor([0.0, 0.0]), "gone": torch.zeros(1)}
    # w (2 old rows of 3): 1*1 + 0 + 2*(3-1)^2 + 0.5*(4-0)^2 = 1 + 8 + 8 = 17; b: 3*1 + 1*1 = 4
    assert quadratic_penalty(params, [(importance, anchor)]).item() == pytest.approx(21.0)
    # terms add up; a term whose tensor has another number of dimensions is skipped
    flat = {"w": torch.ones(6)}
    assert quadratic_penalty(
        params, [(importance, anchor), (importance, anchor), (flat, flat)]
    ).item() == pytest.approx(42.0)


def test_overlap_and_padding() -> None:
    assert overlap(torch.Size([2, 3]), torch.Size([4, 3])) == (slice(0, 2), slice(0, 3))
    assert overlap(torch.Size([2]), torch.Size([2, 1])) is None
    padded = pad_to(torch.tensor([[1.0, 2.0]]), torch.Size([3, 2]))
    assert padded.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]


def grown_setup() -> tuple[dict[str, nn.Parameter], list[tuple[dict[str, Tensor], dict[str, Tensor]]]]:
    g = torch.Generator().manual_seed(0)
    params = {"w": nn.Parameter(torch.randn(4, 3, generator=g)), "b": nn.Parameter(torch.randn(4, generator=g))}
    terms = [
        ({"w": torch.rand(2, 3, generator=g), "b": torch.rand(2, generator=g)},
         {"w": torch.randn(2, 3, generator=g), "b": torch.randn(2, generator=g)}),
        ({"w": torch.rand(3, 3, generator=g)}, {"w": torch.randn(3, 3, generator=g)}),
    ]  # fmt: skip
    return params, terms


def test_penalty_as_gradient_equals_the_gradient_of_the_loss_term() -> None:
    params, terms = grown_setup()
    (2.5 * quadratic_penalty(params, terms)).backward()
    from_loss = {name: p.grad.clone() for name, p in params.items()}  # type: ignore[union-attr]
    for p in params.values():
        p.grad = torch.zeros_like(p)
    add_penalty_gradients(params, terms, 2.5)
    for name, p in params.items():
        torch.testing.assert_close(p.grad, from_loss[name], rtol=1e-6, atol=1e-7)
    assert params["w"].grad[3].abs().sum() == 0  # type: ignore[index]  # the newest row has no penalty
    assert params["b"].grad[2:].abs().sum() == 0  # type: ignore[index]


def test_a_step_without_gradients_gets_no_penalty_and_a_missing_gradient_gets_one() -> None:
    params, terms = grown_setup()
    add_penalty_gradients(params, terms, 1.0)
    assert all(p.grad is None for p in params.values())  # the batch was skipped: no step
    params["w"].grad = torch.zeros_like(params["w"])
    add_penalty_gradients(params, terms, 1.0)
    assert params["b"].grad is not None and params["b"].grad[:2].abs().sum() > 0


def test_task_gradients_remove_exactly_the_own_penalty() -> None:
    params, terms = grown_setup()
    x = torch.randn(5, 3)
    task = (x @ params["w"].T + params["b"]).square().mean()
    task_grads = torch.autograd.grad(task, list(params.values()), retain_graph=True)
    (task + 0.7 * quadratic_penalty(params, terms)).backward()
    recovered = task_gradients(params, terms, 0.7, applied=True)
    for g, expected in zip(recovered.values(), task_grads):
        torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-6)
    # in the gradient form nothing was added yet: p.grad is read as it is
    assert all(torch.equal(task_gradients(params, terms, 0.7, applied=False)[n], p.grad) for n, p in params.items())


def test_apply_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"`apply`: expected one of \['loss', 'grad'\], got 'both'"):
        check_apply("both")


def test_merged_terms_have_the_same_value_and_gradient() -> None:
    params, terms = grown_setup()
    importance, anchor, constant = merge_terms(terms)
    assert importance["w"].shape == (3, 3) and importance["b"].shape == (2,)
    separate = quadratic_penalty(params, terms)
    merged = quadratic_penalty(params, [(importance, anchor)]) + constant
    torch.testing.assert_close(merged, separate, rtol=1e-5, atol=1e-6)
    expected = torch.autograd.grad(separate, list(params.values()))
    for (name, p), g in zip(params.items(), expected):
        torch.testing.assert_close(penalty_gradient(name, p, [(importance, anchor)], 1.0), g, rtol=1e-5, atol=1e-6)
