"""IncrementalClassifier: growth, masking, the optimizer after growth, checkpoints of a grown head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, Experience, StreamResult, fit_stream
from lightning_cl.core.callback import ContinualCallback
from lightning_cl.models.incremental import IncrementalClassifier
from tests.conftest import make_tensor_stream, quiet_trainer
from tests.models.dynamic_helpers import checkpointing_trainer, whole


def experience(index: int, classes: tuple[int, ...]) -> Experience:
    return Experience(index, [0], classes_in_this_experience=classes)


class HeadUser(L.LightningModule):
    """A user's module with a growing head: nothing in it knows about the stream."""

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, masking: bool = True, adam: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = IncrementalClassifier(16, initial_out_features=2, masking=masking)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams["adam"]:
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        else:
            self.optimizer = torch.optim.SGD(
                self.parameters(), lr=self.hparams["lr"], momentum=self.hparams["momentum"]
            )
        return self.optimizer


def test_forward_against_a_hand_computed_reference() -> None:
    head = IncrementalClassifier(2, initial_out_features=3, mask_value=-7.0)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]]))
        head.classifier.bias.copy_(torch.tensor([0.5, 1.0, -2.0]))
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    unmasked = torch.tensor([[3.5, 0.0, 2.0], [0.5, 2.0, 3.0]])  # x W^T + b
    assert torch.equal(head(x), torch.full((2, 3), -7.0))  # nothing trained yet: all masked
    head.adaptation(experience(0, (0, 2)))
    assert torch.equal(head(x), torch.tensor([[3.5, -7.0, 2.0], [0.5, -7.0, 3.0]]))
    plain = IncrementalClassifier(2, initial_out_features=3, masking=False)
    plain.load_state_dict(head.state_dict())
    torch.testing.assert_close(plain(x), unmasked)


def test_masked_units_get_no_probability_and_no_gradient() -> None:
    head = IncrementalClassifier(4, initial_out_features=2)
    head.adaptation(experience(0, (0, 1)))
    head.eval_adaptation(experience(1, (2, 3)))  # grown for the test stream, not trained
    assert head.out_features == 4 and head.active_units.tolist() == [True, True, False, False]
    logits = head(torch.randn(5, 4))
    assert float(logits.softmax(-1)[:, 2:].max()) == 0.0
    F.cross_entropy(logits, torch.tensor([0, 1, 0, 1, 0])).backward()
    assert float(head.classifier.weight.grad[2:].abs().max()) == 0.0
    assert float(head.classifier.weight.grad[:2].abs().max()) > 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_growth_keeps_old_rows_exactly(dtype: torch.dtype) -> None:
    head = IncrementalClassifier(3, initial_out_features=2).to(dtype)
    head.adaptation(experience(0, (0, 1)))
    old_weight, old_bias = head.classifier.weight.detach().clone(), head.classifier.bias.detach().clone()
    rng = torch.get_rng_state()
    head.adaptation(experience(1, (4,)))
    assert torch.equal(torch.get_rng_state(), rng)  # new rows come from their own generator
    assert head.out_features == 5 and head.classifier.weight.dtype == dtype
    assert head.active_units.tolist() == [True, True, False, False, True]
    assert torch.equal(head.classifier.weight[:2], old_weight) and torch.equal(head.classifier.bias[:2], old_bias)
    assert head.classifier.weight.requires_grad
    head.adaptation(experience(2, (1, 3)))  # smaller than the head: nothing grows, class 3 activated
    assert head.out_features == 5 and head.active_units.tolist() == [True, True, False, True, True]


def test_new_rows_depend_on_the_seed_only() -> None:
    heads = []
    for global_seed, seed in ((0, 0), (1, 0), (0, 1)):
        torch.manual_seed(global_seed)
        head = IncrementalClassifier(3, initial_out_features=1, seed=seed)
        head.adaptation(experience(0, (2,)))
        heads.append(head.classifier.weight[1:].detach())
    assert torch.equal(heads[0], heads[1])  # another global RNG state: the same new rows
    assert not torch.equal(heads[0], heads[2])  # another seed: other rows
    assert float(heads[0].abs().max()) <= 3**-0.5  # nn.Linear's default range


class GrowthSpy(ContinualCallback):
    """Records the head right after adaptation, the optimizer's parameters, and the head at the end."""

    def __init__(self) -> None:
        self.start: list[dict[str, Any]] = []
        self.end: list[torch.Tensor] = []
        self.covered: list[bool] = []

    def on_experience_start(self, trainer: L.Trainer, pl_module: Any, experience: Experience) -> None:
        head = pl_module.module.head
        self.start.append(
            {"weight": head.classifier.weight.detach().clone(), "bias": head.classifier.bias.detach().clone()}
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        self.covered.append(all(id(p) in optimized for p in pl_module.module.head.parameters()))

    def on_experience_end(self, trainer: L.Trainer, pl_module: Any, experience: Experience) -> None:
        self.end.append(pl_module.module.head.classifier.weight.detach().clone())


def test_grows_inside_a_user_module_and_the_optimizer_sees_the_new_rows() -> None:
    torch.manual_seed(0)
    spy = GrowthSpy()
    user = HeadUser()
    trainer = quiet_trainer(max_epochs=2, callbacks=[spy])
    dm = make_tensor_stream(num_experiences=3)  # classes (0, 1), (2, 3), (4, 5)
    model = ContinualModule(user)
    for _ in range(3):
        trainer.fit(model, datamodule=dm)
    assert [s["weight"].shape[0] for s in spy.start] == [2, 4, 6]
    assert spy.covered == [True, True, True]
    for k in (1, 2):
        assert torch.equal(spy.start[k]["weight"][: 2 * k], spy.end[k - 1])  # old rows untouched by growth
        assert not torch.equal(spy.end[k][2 * k :], spy.start[k]["weight"][2 * k :])  # new rows trained
    assert user.head.active_units.all()
    x, y = whole(dm.train_stream[2].dataset)
    assert float((user(x).argmax(-1) == y).float().mean()) > 0.9  # the last experience is learned


@pytest.mark.parametrize("keep", [False, True])
def test_optimizer_state_of_the_body_survives_growth(keep: bool) -> None:
    seen: dict[str, Any] = {}

    class Spy(ContinualCallback):
        def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
            user = pl_module.module
            seen["body"] = user.optimizer.state[user.body[0].weight].get("exp_avg")
            seen["head"] = user.optimizer.state[user.head.classifier.weight].get("exp_avg")

    model = ContinualModule(HeadUser(adam=True), keep_optimizer_state=keep)
    trainer = quiet_trainer(callbacks=[Spy()])
    dm = make_tensor_stream(num_experiences=2)
    trainer.fit(model, datamodule=dm)
    trainer.fit(model, datamodule=dm)
    assert (seen["body"] is not None) == keep  # Adam moments of unchanged parameters, on request
    assert seen["head"] is None  # the grown head starts fresh


def test_state_dict_round_trip_into_a_fresh_smaller_head() -> None:
    head = IncrementalClassifier(4, initial_out_features=2, seed=3)
    for k, classes in enumerate([(0, 1), (2, 3, 5)]):
        head.adaptation(experience(k, classes))
    fresh = IncrementalClassifier(4, initial_out_features=2)
    fresh.load_state_dict(head.state_dict())
    assert fresh.out_features == 6
    for key, value in head.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = torch.randn(3, 4)
    assert torch.equal(fresh(x), head(x))
    with pytest.raises(RuntimeError, match=r"size mismatch for classifier\.weight"):
        IncrementalClassifier(4, initial_out_features=8).load_state_dict(head.state_dict())


def test_grown_checkpoint_loads_with_load_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ContinualModule(HeadUser(masking=False))
    trainer = quiet_trainer()
    dm = make_tensor_stream(num_experiences=3)
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "grown.ckpt")
    checkpoint = torch.load(tmp_path / "grown.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["head.classifier.weight"].shape == (4, 16)
    assert checkpoint["state_dict"]["head.active_units"].tolist() == [True] * 4
    bare = HeadUser.load_from_checkpoint(tmp_path / "grown.ckpt")  # built with 2 outputs, grows on load
    assert bare.hparams["masking"] is False
    for key, value in model.state_dict().items():
        assert torch.equal(bare.state_dict()[key], value), key


def run_model(seed: int = 0) -> ContinualModule:
    torch.manual_seed(seed)
    return ContinualModule(HeadUser(lr=0.05))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamResult, dict[str, torch.Tensor], Path]:
    path = tmp_path_factory.mktemp("ckpts")
    model = run_model()
    trainer = checkpointing_trainer(path, max_epochs=3)
    dm = make_tensor_stream(3)
    trainer.test(model, datamodule=dm)
    for k in range(dm.num_experiences):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm)
        trainer.save_checkpoint(path / f"after_exp{k}.ckpt")
    return model.stream_result, {k: v.clone() for k, v in model.state_dict().items()}, path


# epochs 0-2 train experience 0, 3-5 experience 1, 6-8 experience 2
@pytest.mark.parametrize("name", ["after_exp0", "epoch=4", "epoch=5"], ids=["boundary", "mid-experience", "last-epoch"])
def test_resume_with_a_grown_head_gives_the_uninterrupted_result(uninterrupted: Any, name: str, tmp_path: Path) -> None:
    expected, state, path = uninterrupted
    model = run_model(seed=123)  # a fresh head of 2 outputs and other weights: all come from the checkpoint
    result = fit_stream(
        checkpointing_trainer(tmp_path, max_epochs=3), model, make_tensor_stream(3), ckpt_path=path / f"{name}.ckpt"
    )
    torch.testing.assert_close(result.accuracy_matrix, expected.accuracy_matrix)
    assert float(result.accuracy_matrix.diagonal().min()) > 0.8  # each experience is learned
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_features": 0}, ValueError, r"`in_features`: expected a positive integer, got 0"),
        ({"in_features": 4.0}, ValueError, r"`in_features`: expected a positive integer, got 4\.0"),
        ({"initial_out_features": -1}, ValueError, r"`initial_out_features`: expected a positive integer, got -1"),
        ({"masking": 1}, TypeError, r"`masking`: expected a bool, got int"),
        ({"mask_value": "low"}, TypeError, r"`mask_value`: expected a float, got str"),
        ({"seed": 1.5}, TypeError, r"`seed`: expected an int, got float"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    arguments: dict[str, Any] = {"in_features": 4, **kwargs}
    with pytest.raises(error, match=match):
        IncrementalClassifier(**arguments)
