"""iCaRL: its targets, the nearest-mean-of-exemplars scores, herding against a brute-force greedy
search, the exemplars and class means at an experience's end against hand-computed features, the
distillation loss, the stream evaluation through ``eval_logits``, forgetting against naive,
checkpoints, resume and bad input."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.buffers.selection import HerdingSelection
from lightning_cl.callbacks._replay import penultimate_features
from lightning_cl.callbacks.icarl import ICaRL, icarl_targets, nearest_mean_scores
from lightning_cl.core.callback import TrainingStep
from tests.callbacks.memory_method_helpers import checkpointing_trainer, digits_run, samples
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def hidden_by_hand(model: nn.Module, x: Tensor) -> Tensor:
    """TinyClassifier's features, the input of its last Linear: relu(x W1' + b1)."""
    first = model.get_submodule("net.1")
    assert isinstance(first, nn.Linear)
    return torch.clamp(x.flatten(1).double() @ first.weight.double().T + first.bias.double(), min=0)


def unit(rows: Tensor) -> Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


def trained(num_fits: int, memory_size: int = 12, **kwargs: Any) -> tuple[ICaRL, ContinualModule, Any, L.Trainer]:
    torch.manual_seed(0)
    dm = make_tensor_stream(num_experiences=3)
    icarl = ICaRL(memory_size=memory_size, **kwargs)
    trainer = quiet_trainer(max_epochs=2, callbacks=[icarl])
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.1))
    for _ in range(num_fits):
        trainer.fit(model, datamodule=dm)
    return icarl, model, dm, trainer


# ------------------------------------------------------------------------------------ targets
def test_targets_are_one_hot_with_the_old_models_sigmoid_for_old_classes() -> None:
    old_logits = torch.tensor([[0.0, math.log(3.0), 5.0, 5.0], [-math.log(3.0), 0.0, 1.0, 1.0]])
    targets = icarl_targets(torch.tensor([2, 0]), 4, torch.tensor([0, 1]), old_logits)
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4; a label of an old class (an exemplar)
    # gets the old model's outputs there too, as in the paper
    torch.testing.assert_close(targets, torch.tensor([[0.5, 0.75, 1.0, 0.0], [0.25, 0.5, 0.0, 0.0]]))


@pytest.mark.parametrize("old_logits", [None, torch.zeros(2, 3)])
def test_without_old_model_or_old_classes_the_targets_are_one_hot(old_logits: Tensor | None) -> None:
    targets = icarl_targets(torch.tensor([1, 2]), 3, torch.zeros(0, dtype=torch.long), old_logits)
    torch.testing.assert_close(targets, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_the_task_loss_is_the_binary_cross_entropy_over_the_seen_classes() -> None:
    icarl, model, dm, _ = trained(num_fits=1)
    user = model.module
    teacher = TinyClassifier(in_features=8, num_classes=6)
    teacher.load_state_dict(user.state_dict())
    pl_module = SimpleNamespace(module=user, datamodule=dm, predict_logits=lambda batch: user(batch[0]))
    icarl.on_experience_start(None, pl_module, dm.train_stream[1])  # type: ignore[arg-type]
    with torch.no_grad():
        for p in user.parameters():
            p.add_(0.3)  # the student moves away from the old model
    x, y = torch.randn(5, 8), torch.tensor([2, 3, 0, 2, 1])
    step = TrainingStep(pl_module, (x, y), {}, None, torch.tensor(0.0), 0)  # type: ignore[arg-type]
    loss = icarl.task_loss(step)
    assert loss is not None and loss.requires_grad

    # by hand: classes 0-3 seen, 0-1 old; BCE(z, t) = -(t log s(z) + (1 - t) log(1 - s(z))), averaged
    z = user(x).detach().double()[:, :4]
    t = F.one_hot(y, 4).double()
    t[:, :2] = 1 / (1 + torch.exp(-teacher(x).detach().double()[:, :2]))
    s = 1 / (1 + torch.exp(-z))
    expected = -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ nearest mean scores
def test_nearest_mean_scores_by_hand() -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    features = torch.tensor([[3.0, 4.0], [0.0, -2.0]])  # unit: (0.6, 0.8) and (0, -1)
    scores = nearest_mean_scores(features, means, torch.tensor([True, False, True]))
    # minus squared distances: (0.4^2 + 0.8^2), -inf (no exemplars), 0 | (1 + 1), -inf, (0.36 + 3.24)
    expected = torch.tensor([[-0.8, -math.inf, 0.0], [-2.0, -math.inf, -3.6]])
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("seed", range(3))
def test_nearest_mean_scores_rank_like_the_distances(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    features, means = torch.randn(7, 5, generator=g) * 4, unit(torch.randn(4, 5, generator=g))
    scores = nearest_mean_scores(features, means, torch.ones(4, dtype=torch.bool))
    distances = torch.cdist(unit(features), means) ** 2
    torch.testing.assert_close(scores, -distances, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ herding
def herding_by_hand(features: Tensor, count: int) -> list[int]:
    """iCaRL's Algorithm 4 as written: p_k = argmin_x |mu - (phi(x) + sum_{j<k} phi(p_j)) / k|."""
    f = unit(features.double())
    mu = f.mean(0)
    chosen: list[int] = []
    for k in range(1, min(count, len(f)) + 1):
        best, best_distance = -1, math.inf
        for i in range(len(f)):
            if i in chosen:
                continue
            distance = float((mu - (f[chosen].sum(0) + f[i]) / k).norm())
            if distance < best_distance:
                best, best_distance = i, distance
        chosen.append(best)
    return chosen


def test_herding_on_a_toy_set() -> None:
    # mean (0.12, 0.16). Squared distance to it of the running mean with each candidate added:
    # 1st: 4/5, 18/25, 32/25, 16/25, 34/25 -> (0.6, 0.8); 2nd: (0, -1) at 1/10 before (-1, 0) at 4/25;
    # 3rd: (0, 1) at 4/225; 4th: (-1, 0) at 1/20 before (1, 0) at 2/25. Closest-to-centre would take
    # (0, 1) second.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    assert HerdingSelection().rank(5, 5, f, torch.Generator()).tolist() == [3, 4, 1, 2, 0]
    assert HerdingSelection().rank(2, 5, f, torch.Generator()).tolist() == [3, 4]
    scaled = f * torch.tensor([[3.0], [0.5], [2.0], [10.0], [7.0]])  # features are normalised first
    assert HerdingSelection().rank(5, 5, scaled, torch.Generator()).tolist() == [3, 4, 1, 2, 0]


@pytest.mark.parametrize(("seed", "count"), [(0, 5), (1, 12), (2, 30), (3, 1)])
def test_herding_matches_a_brute_force_greedy_search(seed: int, count: int) -> None:
    features = torch.randn(20, 6, generator=torch.Generator().manual_seed(seed)) + 1.0
    ranking = HerdingSelection().rank(count, 20, features, torch.Generator())
    assert ranking.tolist() == herding_by_hand(features, count)
    assert len(set(ranking.tolist())) == min(count, 20)


# ---------------------------------------------------------------------- exemplars and means
def exemplar_features(icarl: ICaRL, model: ContinualModule, dm: Any) -> tuple[Tensor, Tensor]:
    slots = icarl.buffer.slots
    xs, ys = [], []
    for e, p in zip(slots.experience.tolist(), slots.position.tolist()):
        x, y = samples(dm.train_stream[e].dataset, [p])
        xs.append(x)
        ys.append(y)
    return hidden_by_hand(model.module, torch.cat(xs)), torch.cat(ys)


@pytest.mark.parametrize("num_fits", [1, 2])
def test_class_means_are_the_normalised_means_of_normalised_exemplar_features(num_fits: int) -> None:
    icarl, model, dm, _ = trained(num_fits)
    features, labels = exemplar_features(icarl, model, dm)
    seen = 2 * num_fits
    assert sorted(labels.tolist()) == sorted(list(range(seen)) * (12 // seen))  # an equal share per class
    assert icarl.has_mean.tolist() == [True] * seen
    for c in range(seen):
        expected = unit(unit(features[labels == c]).mean(0, keepdim=True))[0]
        torch.testing.assert_close(icarl.class_means[c].double(), expected, rtol=1e-5, atol=1e-6)


def test_exemplars_are_the_herding_order_and_old_classes_keep_a_prefix() -> None:
    icarl, model, dm, trainer = trained(num_fits=1)
    experience = dm.train_stream[0]
    x, y = samples(experience.dataset, range(len(experience)))
    features = hidden_by_hand(model.module, x)
    kept = {}
    for c in (0, 1):
        members = (y == c).nonzero().squeeze(1)
        expected = members[herding_by_hand(features[members], 6)]
        mine = icarl.buffer.slots.position[icarl.buffer.slots.targets == c]
        assert mine.tolist() == expected.tolist()  # in herding order
        kept[c] = mine.tolist()
    trainer.fit(model, datamodule=dm)
    for c in (0, 1):  # 12 exemplars for 4 classes: the first 3 of the old order
        assert icarl.buffer.slots.position[icarl.buffer.slots.targets == c].tolist() == kept[c][:3]


class HeadFirst(nn.Module):
    """A model that registers its classifier before its body."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 6)
        self.body = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
        self.unused = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def test_features_are_the_input_of_the_linear_layer_run_last() -> None:
    torch.manual_seed(0)
    model, x = HeadFirst(), torch.randn(3, 8)
    torch.testing.assert_close(penultimate_features(model, [x, torch.zeros(3, dtype=torch.long)]), model.body(x))


def test_a_model_that_runs_no_linear_layer_has_no_default_features() -> None:
    model = HeadFirst()
    model.forward = lambda x: x[:, :6]  # type: ignore[method-assign]
    with pytest.raises(TypeError, match=r"runs none of its nn\.Linear layers.*`feature_extractor="):
        penultimate_features(model, [torch.randn(2, 8), torch.zeros(2, dtype=torch.long)])


# -------------------------------------------------------------------------------- evaluation
class ModelLogitsICaRL(ICaRL):
    """iCaRL trained the same way, evaluated with the model's own logits."""

    def eval_logits(self, pl_module: ContinualModule, batch: Any, logits: Tensor) -> Tensor | None:
        return None


def test_the_stream_is_evaluated_with_the_nearest_mean_of_exemplars() -> None:
    results = {}
    for kind in (ICaRL, ModelLogitsICaRL):
        torch.manual_seed(0)
        icarl = kind(memory_size=12)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.1))
        dm = make_tensor_stream(num_experiences=3)
        results[kind] = fit_stream(quiet_trainer(max_epochs=2, callbacks=[icarl]), model, dm, evaluate_initial=False)
        if kind is ICaRL:
            # the last row by hand: each test sample goes to the class of the nearest normalised mean
            for j, experience in enumerate(dm.test_stream):
                x, y = samples(experience.dataset, range(len(experience)))
                distances = torch.cdist(unit(hidden_by_hand(model.module, x)), icarl.class_means.double())
                accuracy = float((distances.argmin(1) == y).double().mean())
                assert float(results[kind].accuracy_matrix[-1, j]) == pytest.approx(accuracy)
    nme, logits = results[ICaRL].accuracy_matrix, results[ModelLogitsICaRL].accuracy_matrix
    assert not torch.equal(nme, logits)
    # the same training, read two ways (when written, last rows 1.0 1.0 0.875 and 1.0 0.825 0.075: two
    # epochs of the binary cross-entropy leave the newest classes' outputs weak; their means are right)
    assert float(nme[-1].mean()) > float(logits[-1].mean()) + 0.2


def test_no_nearest_mean_before_any_exemplar() -> None:
    assert ICaRL(memory_size=10).eval_logits(None, None, torch.zeros(2, 3)) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- training
def test_icarl_beats_naive_on_class_incremental_digits() -> None:
    naive, icarl = digits_run([]), digits_run([ICaRL(memory_size=200)])
    # when written: naive 0.166 (forgetting 0.99), iCaRL 0.804 (forgetting 0.07)
    assert naive.average_accuracy < 0.25
    assert icarl.average_accuracy > naive.average_accuracy + 0.45
    assert icarl.forgetting < 0.25


# ------------------------------------------------------------------------------- checkpoints
def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            assert_same_state(value, b[key])
        elif isinstance(value, Tensor):
            torch.testing.assert_close(b[key], value, rtol=0, atol=0)
        else:
            assert b[key] == value


def test_state_dict_round_trip_with_class_means_and_teacher(tmp_path: Path) -> None:
    torch.manual_seed(0)
    icarl = ICaRL(memory_size=12)
    # epochs 0-1 train experience 0, 2-3 experience 1: "epoch=2" is saved mid-experience, with the old model
    trainer = checkpointing_trainer(tmp_path, [icarl])
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    dm = make_tensor_stream(num_experiences=3)
    trainer.fit(model, datamodule=dm)
    old_model = {k: v.clone() for k, v in model.module.state_dict().items()}
    trainer.fit(model, datamodule=dm)
    saved = torch.load(tmp_path / "epoch=2.ckpt", weights_only=True)["callbacks"][icarl.state_key]
    assert_same_state(old_model, saved["teacher"])  # the model as experience 1 started
    assert {"buffer", "class_means", "has_mean", "old_classes", "seen_classes", "teacher"} <= set(saved)
    assert saved["old_classes"].tolist() == [0, 1] and saved["seen_classes"].tolist() == [0, 1, 2, 3]
    assert saved["has_mean"].tolist() == [True, True]  # the means of experience 0's end

    restored = ICaRL(memory_size=12)
    restored.load_state_dict(saved)
    assert_same_state(saved, restored.state_dict())

    # the restored old model (rebuilt from a copy of the student at first use) gives the same loss
    # as the one the checkpoint was taken from
    teacher = TinyClassifier(in_features=8, num_classes=6)
    teacher.load_state_dict(saved["teacher"])
    x, y = torch.randn(4, 8), torch.tensor([2, 3, 0, 1])
    student = model.module
    pl_module = SimpleNamespace(module=student, datamodule=dm, predict_logits=lambda batch: student(batch[0]))
    step = TrainingStep(pl_module, (x, y), {}, None, torch.tensor(0.0), 0)  # type: ignore[arg-type]
    loss = restored.task_loss(step)
    z = student(x).detach().double()[:, :4]
    t = F.one_hot(y, 4).double()
    t[:, :2] = torch.sigmoid(teacher(x).detach().double()[:, :2])
    assert loss is not None
    torch.testing.assert_close(loss.double(), F.binary_cross_entropy_with_logits(z, t), rtol=1e-5, atol=1e-6)

    # and at the boundary: the means and exemplars of experience 1, no old model
    final = icarl.state_dict()
    assert "teacher" not in final and final["has_mean"].tolist() == [True] * 4
    again = ICaRL(memory_size=12)
    again.load_state_dict(final)
    assert_same_state(final, again.state_dict())
    assert again.buffer.fingerprint() == icarl.buffer.fingerprint()


def test_weights_only_checkpoint_of_a_trainer(tmp_path: Path) -> None:
    icarl, _, _, trainer = trained(num_fits=2)
    trainer.save_checkpoint(tmp_path / "icarl.ckpt")
    saved = torch.load(tmp_path / "icarl.ckpt", weights_only=True)["callbacks"][icarl.state_key]
    restored = ICaRL(memory_size=12)
    restored.load_state_dict(saved)
    assert_same_state(icarl.state_dict(), restored.state_dict())


def test_two_instances_do_not_collide() -> None:
    assert ICaRL(memory_size=10).state_key != ICaRL(memory_size=20).state_key


# "epoch=1": the end of experience 0 before its exemplars are chosen; "epoch=2": mid-experience 1
@pytest.mark.parametrize("name", ["epoch=1", "epoch=2"])
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, name: str) -> None:
    def run(path: Path, ckpt: Path | None, seed: int) -> Any:
        torch.manual_seed(seed)
        model = ContinualModule(TinyClassifier(in_features=8, num_classes=6, lr=0.2))
        trainer = checkpointing_trainer(path, [ICaRL(memory_size=12)])
        return fit_stream(trainer, model, make_tensor_stream(3), ckpt_path=ckpt, evaluate_initial=False)

    full = run(tmp_path / "full", None, 0)
    resumed = run(tmp_path / "resumed", tmp_path / "full" / f"{name}.ckpt", 123)
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", [0, -1, 3.0, True])
def test_memory_size_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"`memory_size`: expected a positive integer, got {value!r}"):
        ICaRL(memory_size=value)


class NoLinear(L.LightningModule):
    """Logits from a bare parameter matrix: no nn.Linear whose input iCaRL could read."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 8) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_model_without_a_linear_classifier_needs_a_feature_extractor() -> None:
    with pytest.raises(TypeError, match=r"ICaRL needs the model's features.*no nn\.Linear.*`feature_extractor="):
        quiet_trainer(callbacks=[ICaRL(memory_size=10)]).fit(
            ContinualModule(NoLinear()), datamodule=make_tensor_stream(3)
        )
    # with one, it trains, and the means live in the extractor's space (the inputs here)
    icarl = ICaRL(memory_size=10, feature_extractor=lambda model, batch: batch[0])
    quiet_trainer(callbacks=[icarl]).fit(ContinualModule(NoLinear()), datamodule=make_tensor_stream(3))
    assert icarl.class_means.shape == (2, 8) and len(icarl.buffer) == 10
