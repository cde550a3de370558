"""LFL: the feature distance against an explicit MSE, the classifier freeze, forgetting against naive on a
domain-incremental stream, checkpoints and resume, DDP and bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks import domain_incremental
from lightning_cl.callbacks.lfl import LFL
from lightning_cl.core.callback import TrainingStep
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.models import MLP, Classifier
from tests.callbacks.regularization_helpers import assert_ranks_agree, two_process_results
from tests.conftest import TinyClassifier, quiet_trainer


class FeatureNet(L.LightningModule):
    """A user module with `features(x)` as a method and a `classifier` submodule."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)
        self.lr = lr

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def domain_stream(num_domains: int = 3, per_class: int = 40, seed: int = 0) -> Any:
    """Four Gaussian blobs in 8-D; domain d permutes the input features (a small PermutedMNIST)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=g) * 2
    y = torch.arange(4).repeat_interleave(per_class)
    x = centers[y] + torch.randn(len(y), 8, generator=g)
    x_test = centers[y] + torch.randn(len(y), 8, generator=g)
    perms = [torch.arange(8)] + [torch.randperm(8, generator=g) for _ in range(num_domains - 1)]
    transforms = [lambda batch, p=p: batch[:, p] for p in perms]
    return domain_incremental(InMemoryDataset(x, y), InMemoryDataset(x_test, y), transforms, batch_size=16)


def started(callback: LFL, model: nn.Module, dm: Any, index: int) -> None:
    pl_module = SimpleNamespace(module=model, datamodule=dm)
    callback.on_experience_start(None, pl_module, dm.train_stream[index])  # type: ignore[arg-type]


def step_of(model: nn.Module, x: torch.Tensor) -> TrainingStep:
    batch = (x, torch.zeros(len(x), dtype=torch.long))
    return TrainingStep(SimpleNamespace(module=model), batch, {}, None, torch.tensor(0.0), 0)  # type: ignore[arg-type]


def perturb(module: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


# ------------------------------------------------------------------------------------------ math
@pytest.mark.parametrize("lambda_e", [1.0, 0.25])
def test_term_is_lambda_times_mean_squared_feature_distance(lambda_e: float) -> None:
    torch.manual_seed(0)
    model = FeatureNet()
    callback = LFL(lambda_e=lambda_e)
    started(callback, model, domain_stream(), 1)
    w, b = (p.clone() for p in model.trunk[0].parameters())
    perturb(model)
    x = torch.randn(5, 8)
    term = callback.loss_terms(step_of(model, x))["lfl"]
    old = torch.clamp(x @ w.T + b, min=0)  # the features at the experience start, by hand
    new = model.features(x)
    expected = lambda_e * ((new - old) ** 2).sum() / new.numel()
    torch.testing.assert_close(term, expected)
    assert term.requires_grad


def test_features_and_classifier_of_the_one_submodule_that_has_them() -> None:
    torch.manual_seed(0)
    user = Classifier(MLP(8, 4, hidden_sizes=(6,)))  # features and classifier live on `backbone`
    callback = LFL(lambda_e=1.0)
    started(callback, user, domain_stream(), 1)
    assert [p.requires_grad for p in user.backbone.classifier.parameters()] == [False, False]
    old = user.backbone.features(x := torch.randn(4, 8)).detach()
    perturb(user.backbone.features)
    term = callback.loss_terms(step_of(user, x))["lfl"]
    torch.testing.assert_close(term, F.mse_loss(user.backbone.features(x), old))


def test_no_term_in_the_first_experience_and_with_zero_lambda() -> None:
    dm, model = domain_stream(), FeatureNet()
    first = LFL(lambda_e=1.0)
    started(first, model, dm, 0)
    assert first.loss_terms(step_of(model, torch.randn(3, 8))) == {}
    assert all(p.requires_grad for p in model.classifier.parameters())
    per_experience = LFL(lambda_e=[0.0, 0.0, 1.0])
    started(per_experience, model, dm, 1)
    assert per_experience.loss_terms(step_of(model, torch.randn(3, 8))) == {}
    started(per_experience, model, dm, 2)
    perturb(model)
    assert float(per_experience.loss_terms(step_of(model, torch.randn(3, 8)))["lfl"]) > 0


def test_old_model_runs_in_eval_mode_and_the_student_keeps_its_mode() -> None:
    model = FeatureNet()
    model.trunk.append(nn.Dropout(0.5))
    callback = LFL(lambda_e=1.0)
    started(callback, model, domain_stream(), 1)
    model.train()
    x = torch.randn(64, 8)
    torch.manual_seed(0)
    term = callback.loss_terms(step_of(model, x))["lfl"]
    assert model.training and callback._teacher is not None and not callback._teacher.training
    torch.manual_seed(0)
    dropped = model.features(x)  # the same dropout mask: the old model adds no randomness
    torch.testing.assert_close(term, F.mse_loss(dropped, callback._teacher.features(x)))


# ------------------------------------------------------------------------------------ training
def test_classifier_is_frozen_from_the_second_experience() -> None:
    torch.manual_seed(0)
    user = FeatureNet()
    model, dm = ContinualModule(user), domain_stream()
    trainer = quiet_trainer(callbacks=[LFL(lambda_e=1.0)])
    before = user.classifier.weight.detach().clone()
    trainer.fit(model, datamodule=dm)
    assert all(p.requires_grad for p in user.classifier.parameters())
    after_first = user.classifier.weight.detach().clone()
    assert not torch.equal(after_first, before)  # trained in experience 0
    trunk = user.trunk[0].weight.detach().clone()
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
        assert not any(p.requires_grad for p in user.classifier.parameters())
    torch.testing.assert_close(user.classifier.weight, after_first, rtol=0, atol=0)
    assert not torch.equal(user.trunk[0].weight, trunk)
    assert float(trainer.callback_metrics["train/lfl_loss"]) > 0


def domain_run(callbacks: list[Any]) -> Any:
    torch.manual_seed(0)
    model = ContinualModule(Classifier(MLP(8, 4, hidden_sizes=(64,)), lr=0.1))
    return fit_stream(quiet_trainer(max_epochs=10, callbacks=callbacks), model, domain_stream(), evaluate_initial=False)


def test_lfl_forgets_less_than_naive_on_domain_incremental() -> None:
    naive, lfl = domain_run([]), domain_run([LFL(lambda_e=2.0)])
    # when written: naive 0.78 on average, 0.49 on domain 0; LFL 0.86 and 0.72
    assert float(naive.accuracy_matrix[-1, -1]) > 0.9 and float(lfl.accuracy_matrix[-1, -1]) > 0.9
    assert lfl.average_accuracy > naive.average_accuracy + 0.04
    assert float(lfl.accuracy_matrix[-1, 0]) > float(naive.accuracy_matrix[-1, 0]) + 0.1


# --------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    user = FeatureNet()
    callback = LFL(lambda_e=[0.0, 0.5, 1.0])
    trainer, model, dm = quiet_trainer(callbacks=[callback]), ContinualModule(user), domain_stream()
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    state = callback.state_dict()
    assert set(state) == {"experience", "teacher"} and state["experience"] == 1

    path = tmp_path / "lfl.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"][callback.state_key]
    restored = LFL(lambda_e=[0.0, 0.5, 1.0])
    restored.load_state_dict(saved)
    assert restored.state_dict()["experience"] == 1
    for name, value in state["teacher"].items():
        torch.testing.assert_close(restored.state_dict()["teacher"][name], value, rtol=0, atol=0)
    x = torch.randn(5, 8)
    torch.testing.assert_close(
        restored.loss_terms(step_of(user, x))["lfl"], callback.loss_terms(step_of(user, x))["lfl"]
    )
    assert LFL(lambda_e=1.0).state_key != LFL(lambda_e=2.0).state_key


def checkpointing_trainer(path: Path) -> L.Trainer:
    saver = ModelCheckpoint(dirpath=path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saver, LFL(lambda_e=1.0)])


def test_run_resumed_mid_experience_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ContinualModule(FeatureNet())
    full = fit_stream(checkpointing_trainer(tmp_path / "full"), model, domain_stream(), evaluate_initial=False)
    # "epoch=2" is in the middle of experience 1: no on_experience_start runs, the old model comes
    # from the checkpoint and the classifier is frozen again in setup
    torch.manual_seed(123)
    user = FeatureNet()
    resumed_model = ContinualModule(user)
    resumed = fit_stream(
        checkpointing_trainer(tmp_path / "resumed"),
        resumed_model,
        domain_stream(),
        ckpt_path=tmp_path / "full" / "epoch=2.ckpt",
        evaluate_initial=False,
    )
    assert not any(p.requires_grad for p in user.classifier.parameters())
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[k], v)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("lambda_e", "error", "match"),
    [
        (-0.1, ValueError, r"`lambda_e`: expected a non-negative finite number, got -0\.1"),
        ([1.0, -1.0], ValueError, r"`lambda_e\[1\]`: expected a non-negative"),
        ([], ValueError, r"`lambda_e`: .* got an empty list"),
        (float("inf"), ValueError, r"`lambda_e`"),
        ("0.1", TypeError, r"`lambda_e`: expected a non-negative number or a list of them, got str"),
        (None, TypeError, r"`lambda_e`"),
    ],
)
def test_bad_lambda(lambda_e: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LFL(lambda_e=lambda_e)


class NoFeatures(TinyClassifier):
    """`net` holds everything: no `features`, no `classifier`."""


class NoClassifier(FeatureNet):
    def __init__(self) -> None:
        super().__init__()
        self.head = self.classifier
        del self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TwoBackbones(TinyClassifier):
    def __init__(self) -> None:
        super().__init__(in_features=8, num_classes=4)
        self.a, self.b = MLP(8, 4, hidden_sizes=(4,)), MLP(8, 4, hidden_sizes=(4,))


@pytest.mark.parametrize(
    ("user", "match"),
    [
        (
            NoFeatures(in_features=8, num_classes=4),
            r"LFL needs .* NoFeatures has no `features` and no `classifier`\. Add",
        ),
        (NoClassifier(), r"LFL needs .* NoClassifier has no `classifier`\. Add .* a `classifier` submodule"),
        (TwoBackbones(), r"several submodules have both: \['a', 'b'\]"),
    ],
)
def test_a_model_without_features_or_classifier_is_a_clear_error(user: L.LightningModule, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        quiet_trainer(callbacks=[LFL(lambda_e=1.0)]).fit(ContinualModule(user), datamodule=domain_stream())


def test_features_must_return_a_tensor() -> None:
    class TupleFeatures(FeatureNet):
        def features(self, x: torch.Tensor) -> Any:  # type: ignore[override]
            return self.trunk(x), x

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.trunk(x))

    callback = LFL(lambda_e=1.0)
    started(callback, model := TupleFeatures(), domain_stream(), 1)
    with pytest.raises(TypeError, match=r"LFL: TupleFeatures\.features\(x\) must return a tensor, got tuple"):
        callback.loss_terms(step_of(model, torch.randn(2, 8)))


def test_lambda_list_needs_one_value_per_experience() -> None:
    with pytest.raises(ValueError, match=r"`lambda_e`: expected one value per experience \(3 for this stream\), got 4"):
        quiet_trainer(callbacks=[LFL(lambda_e=[1.0] * 4)]).fit(
            ContinualModule(FeatureNet()), datamodule=domain_stream()
        )


# ------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    user = FeatureNet()
    model = ContinualModule(user)
    callback = LFL(lambda_e=1.0)
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2, callbacks=[callback])
    dm = domain_stream(num_domains=2)
    trainer.fit(model, datamodule=dm)
    classifier = user.classifier.weight.detach().clone()
    # a classifier frozen after the DDP wrap would make DDP wait for its gradients and fail here
    trainer.fit(model, datamodule=dm)
    saved = {
        "state": model.state_dict(),
        "teacher": callback.state_dict()["teacher"],
        "lfl_loss": trainer.callback_metrics["train/lfl_loss"],
        "classifier_moved": not torch.equal(classifier, user.classifier.weight),
    }
    torch.save(saved, Path(out) / f"rank{rank}.pt")


@pytest.mark.ddp
def test_ddp_ranks_agree_and_the_classifier_stays_frozen(tmp_path: Path) -> None:
    ranks = two_process_results(_ddp_worker, tmp_path)
    assert float(ranks[0]["lfl_loss"]) > 0
    assert not ranks[0]["classifier_moved"] and not ranks[1]["classifier_moved"]
    assert_ranks_agree(ranks, ("state", "teacher"))
