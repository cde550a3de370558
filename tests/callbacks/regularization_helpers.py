"""Streams, runs and checks shared by the tests of the regularization callbacks (EWC, SI, MAS, RWalk, LwF, LFL)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_cl import ContinualModule, StreamDataModule, fit_stream
from lightning_cl.benchmarks import Permute, domain_incremental
from lightning_cl.benchmarks.digits import load_digits, stratified_split
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.dynamic import DynamicModule
from lightning_cl.core.experience import Experience
from lightning_cl.models import MLP, Classifier
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer, run_two_processes


def permuted_digits(num_experiences: int = 3, seed: int = 0) -> StreamDataModule:
    """PermutedMNIST in miniature: the embedded 8x8 digits under fixed random pixel permutations."""
    x, y = load_digits()
    x = x.float().view(len(x), -1) / 16
    train, test = stratified_split(y, 0.25, seed)
    g = torch.Generator().manual_seed(seed)
    permutations = [torch.arange(64)] + [torch.randperm(64, generator=g) for _ in range(num_experiences - 1)]
    return domain_incremental(
        InMemoryDataset(x[train], y[train]),
        InMemoryDataset(x[test], y[test]),
        [Permute(p) for p in permutations],
        batch_size=32,
        eval_batch_size=500,
    )


def retained_accuracy(callbacks: list[L.Callback], epochs: int = 3, lr: float = 0.05) -> float:
    """Accuracy on experience 0 of the permuted digits after training all three experiences."""
    torch.manual_seed(0)
    model = ContinualModule(Classifier(MLP(64, 10, hidden_sizes=(64,)), lr=lr, momentum=0.9))
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks)
    result = fit_stream(trainer, model, permuted_digits(), evaluate_initial=False)
    return float(result.accuracy_matrix[-1, 0])


def assert_beats_naive(callback: L.Callback, margin: float) -> None:
    """Naive fine-tuning forgets the first permutation; ``callback`` retains more than ``margin`` more of it."""
    naive = retained_accuracy([])
    accuracy = retained_accuracy([callback])
    assert naive < 0.4, naive  # the first permutation is forgotten
    assert accuracy > naive + margin, (accuracy, naive)


def tiny_stream() -> StreamDataModule:
    return make_tensor_stream(num_experiences=3, per_class=12, num_classes=6)


def tiny_module() -> TinyClassifier:
    return TinyClassifier(in_features=8, num_classes=6, hidden=16)


def train_both_forms(factory: Callable[[str], L.Callback], epochs: int = 2) -> dict[str, tuple[dict[str, Tensor], Any]]:
    """The same stream and seed with the penalty as a loss term and as a gradient: weights and state of each."""
    out = {}
    for apply in ("loss", "grad"):
        torch.manual_seed(0)
        callback = factory(apply)
        model = ContinualModule(tiny_module())
        trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback])
        fit_stream(trainer, model, tiny_stream(), evaluate_initial=False)
        weights = {k: v.clone() for k, v in model.module.state_dict().items()}
        out[apply] = (weights, callback.state_dict())
    return out


def assert_both_forms_agree(
    factory: Callable[[str], L.Callback], weights: dict[str, float], state: dict[str, float]
) -> dict[str, Tensor]:
    """Train with the penalty as a loss term and as a gradient (:func:`train_both_forms`): the final
    weights agree within the tolerance ``weights``, the callbacks' states within ``state``.

    Returns the loss form's weights.
    """
    runs = train_both_forms(factory)
    (loss_weights, loss_state), (grad_weights, grad_state) = runs["loss"], runs["grad"]
    assert_same_tensors(grad_weights, loss_weights, **weights)
    assert_same_tensors(grad_state, loss_state, **state)
    return loss_weights


def assert_same_tensors(a: Any, b: Any, **tolerance: float) -> None:
    """Nested dicts/lists of tensors and primitives are equal (tensors within ``tolerance``)."""
    if isinstance(a, Tensor):
        torch.testing.assert_close(a, b, **tolerance)  # type: ignore[arg-type]
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key], **tolerance)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y, **tolerance)
    else:
        assert a == b


def checkpoint_round_trip(callback: L.Callback, fresh: L.Callback, tmp_path: Path, epochs: int = 2) -> None:
    """Train two experiences, then: state_dict -> load_state_dict, and a Lightning checkpoint read with weights_only."""
    torch.manual_seed(0)
    dm = tiny_stream()
    model = ContinualModule(tiny_module())
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback])
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = callback.state_dict()
    fresh.load_state_dict(state)
    assert_same_tensors(fresh.state_dict(), state, rtol=0, atol=0)
    path = tmp_path / "exp1.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["callbacks"][callback.state_key]
    assert_same_tensors(saved, state, rtol=0, atol=0)


class GrowingHead(DynamicModule):
    """A linear head with as many outputs as the classes seen so far (old rows kept)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, 2)
        self.seen = 2

    def adaptation(self, experience: Experience) -> None:
        wanted = max(self.seen, max(experience.classes_in_this_experience) + 1)
        if wanted == self.layer.out_features:
            return
        old = self.layer
        self.layer = nn.Linear(old.in_features, wanted)
        with torch.no_grad():
            self.layer.weight[: old.out_features] = old.weight
            self.layer.bias[: old.out_features] = old.bias
        self.seen = wanted

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class GrowingClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), GrowingHead(16)), lr=0.1)


def full_batch_stream(batch_size: int = 24) -> StreamDataModule:
    """3 experiences of 24 training samples: with ``batch_size=24`` one step per epoch, in any sample order."""
    return make_tensor_stream(num_experiences=3, per_class=12, num_classes=6, batch_size=batch_size)


def experience_tensors(dm: StreamDataModule, k: int) -> tuple[Tensor, Tensor]:
    dataset = dm.train_stream[k].dataset
    x, y = zip(*(dataset[i] for i in range(len(dataset))))  # type: ignore[arg-type]
    return torch.stack(x), torch.stack(y)


def task_gradient(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Gradient of the mean cross-entropy of one full batch, by parameter name."""
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}  # type: ignore[union-attr]


class FakeScaler:
    """An fp16 gradient scaler whose scale the test sets (it drops when a step is skipped)."""

    def __init__(self) -> None:
        self.scale = 1024.0

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.scale


def step_by_hand(callback: L.Callback, model: ContinualModule, skipped: bool) -> None:
    """One optimizer step driven through the callback's hooks; a skipped step has inf gradients and no move."""
    scaler = FakeScaler()
    trainer: Any = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    for p in model.module.parameters():
        p.grad = torch.full_like(p, float("inf") if skipped else 0.5)
    callback.on_before_optimizer_step(trainer, model, None)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.module.parameters():
            if skipped:
                scaler.scale /= 2  # what GradScaler.update does after an overflow
                break
            p -= 0.1 * p.grad  # type: ignore[operator]
    callback.on_train_batch_end(trainer, model, None, None, 0)


def two_process_results(worker: Callable[[int, str], None], tmp_path: Path) -> list[dict[str, Any]]:
    """Run ``worker(rank, str(tmp_path))`` in two processes; what each rank saved to ``tmp_path / f"rank{rank}.pt"``."""
    run_two_processes(worker, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def assert_ranks_agree(ranks: list[dict[str, Any]], keys: Iterable[str]) -> None:
    """The ``{name: tensor}`` dicts the ranks saved under ``keys`` are equal to the bit (rank 0's names)."""
    for key in keys:
        for name, value in ranks[0][key].items():
            torch.testing.assert_close(value, ranks[1][key][name], rtol=0, atol=0)
