"""EWC: the Fisher against a per-sample loop, penalty by hand, separate vs online, both penalty forms, growth, DDP."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.callbacks._importance import pad_to
from lightning_cl.callbacks.ewc import EWC
from tests.callbacks.regularization_helpers import (
    GrowingClassifier,
    assert_beats_naive,
    assert_both_forms_agree,
    assert_same_tensors,
    checkpoint_round_trip,
    tiny_module,
    tiny_stream,
    two_process_results,
)
from tests.conftest import make_tensor_stream, quiet_trainer


class TwoHeads(L.LightningModule):
    """A user's task-incremental model: shared layer, one head per task, ``forward(x, task_labels)``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 6)
        self.heads = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))

    def forward(self, x: Tensor, task_labels: Tensor) -> Tensor:
        h = torch.tanh(self.trunk(x))
        return torch.stack([head(h) for head in self.heads], 1)[torch.arange(len(x)), task_labels]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0], batch[2]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fisher_by_loop(model: nn.Module, dataset: Any, task_labels: bool) -> dict[str, Tensor]:
    """The definition: mean over samples of the squared gradient of each sample's own cross-entropy."""
    model.eval()
    fisher = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(len(dataset)):
        sample = dataset[i]
        x, y = sample[0].unsqueeze(0), sample[1].view(1)
        model.zero_grad()
        logits = model(x, sample[2].view(1)) if task_labels else model(x)
        F.cross_entropy(logits, y).backward()
        for name, p in model.named_parameters():
            fisher[name] += p.grad.square() / len(dataset)  # type: ignore[union-attr]
    model.train()
    return fisher


@pytest.mark.parametrize("task_labels", [False, True], ids=["single-head", "multi-head"])
def test_fisher_is_the_mean_squared_per_sample_gradient(task_labels: bool) -> None:
    torch.manual_seed(0)
    user = TwoHeads() if task_labels else tiny_module()
    dm = make_tensor_stream(num_experiences=3, per_class=12, num_classes=6, task_labels=task_labels, batch_size=16)
    ewc = EWC(ewc_lambda=1.0, batch_size=5)  # batches of 5: the last one is partial
    trainer = quiet_trainer(callbacks=[ewc])
    trainer.fit(ContinualModule(user), datamodule=dm)
    assert user.training  # the Fisher pass put the model back in train mode
    expected = fisher_by_loop(user, dm.train_stream[0].dataset, task_labels)
    state = ewc.state_dict()
    assert_same_tensors(state["fisher"][0], expected, rtol=1e-5, atol=1e-7)
    assert_same_tensors(state["anchor"][0], dict(user.named_parameters()), rtol=0, atol=0)


def test_penalty_is_lambda_times_the_fisher_weighted_distance_summed_over_experiences() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.5)
    ewc = EWC(ewc_lambda=3.0)
    ewc.load_state_dict(
        {
            "mode": "separate",
            "fisher": [
                {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([4.0])},
                {"weight": torch.ones(1, 2)},
            ],
            "anchor": [{"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}, {"weight": torch.ones(1, 2)}],
        }
    )
    step = SimpleNamespace(module=SimpleNamespace(module=model))
    # experience 0: 1*1 + 2*4 + 4*0.25 = 10; experience 1: 0 + 1*1 = 1; times 3
    assert ewc.loss_terms(step)["ewc"].item() == pytest.approx(33.0)  # type: ignore[arg-type]


def test_online_mode_keeps_one_decayed_fisher_and_the_latest_anchor() -> None:
    # ewc_lambda=0: both runs follow the same trajectory, so their bookkeeping can be compared
    states = {}
    for mode, decay in (("separate", None), ("online", 0.5)):
        torch.manual_seed(0)
        ewc = EWC(ewc_lambda=0.0, mode=mode, decay_factor=decay)
        fit_stream(
            quiet_trainer(callbacks=[ewc]), ContinualModule(tiny_module()), tiny_stream(), evaluate_initial=False
        )
        states[mode] = ewc.state_dict()
    separate, online = states["separate"], states["online"]
    assert len(separate["fisher"]) == len(separate["anchor"]) == 3
    assert len(online["fisher"]) == len(online["anchor"]) == 1
    f0, f1, f2 = separate["fisher"]
    expected = {name: 0.5 * (0.5 * f0[name] + f1[name]) + f2[name] for name in f2}
    assert_same_tensors(online["fisher"][0], expected, rtol=1e-6, atol=1e-8)
    assert_same_tensors(online["anchor"][0], separate["anchor"][2], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_loss_and_gradient_forms_give_the_same_parameters(mode: str) -> None:
    decay = 0.7 if mode == "online" else None
    # the gradient form performs the operations autograd performs on the loss term: bit for bit
    exact = {"rtol": 0.0, "atol": 0.0}
    loss_weights = assert_both_forms_agree(
        lambda apply: EWC(ewc_lambda=5.0, mode=mode, decay_factor=decay, apply=apply), weights=exact, state=exact
    )
    # and the penalty did act: without it the weights end elsewhere
    torch.manual_seed(0)
    naive = ContinualModule(tiny_module())
    fit_stream(quiet_trainer(max_epochs=2), naive, tiny_stream(), evaluate_initial=False)
    assert not torch.allclose(naive.module.net[1].weight, loss_weights["net.1.weight"], atol=1e-3)


def test_a_grown_head_keeps_its_fisher_on_the_old_rows() -> None:
    # ewc_lambda=0: both runs follow the same trajectory, so their Fishers can be compared
    states = {}
    for mode, decay in (("separate", None), ("online", 0.5)):
        torch.manual_seed(0)
        ewc = EWC(ewc_lambda=0.0, mode=mode, decay_factor=decay)
        model, dm, trainer = ContinualModule(GrowingClassifier()), tiny_stream(), quiet_trainer(callbacks=[ewc])
        for _ in range(dm.num_experiences):  # no test: the head cannot classify future classes yet
            trainer.fit(model, datamodule=dm)
        states[mode] = ewc.state_dict()
    head = "backbone.2.layer.weight"
    f0, f1, f2 = states["separate"]["fisher"]
    assert [f[head].shape[0] for f in (f0, f1, f2)] == [2, 4, 6]
    shape = f2[head].shape
    expected = 0.5 * (0.5 * pad_to(f0[head], shape) + pad_to(f1[head], shape)) + f2[head]
    torch.testing.assert_close(states["online"]["fisher"][0][head], expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("apply", ["loss", "grad"])
def test_the_penalty_of_a_grown_parameter_spares_its_new_rows(apply: str) -> None:
    torch.manual_seed(0)
    user = tiny_module()  # net.3 is the 16 -> 6 classifier; the state is from when it had 4 outputs
    ewc = EWC(ewc_lambda=1.0, apply=apply)
    ewc.load_state_dict(
        {"fisher": [{"net.3.weight": torch.ones(4, 16)}], "anchor": [{"net.3.weight": torch.zeros(4, 16)}]}
    )
    model = ContinualModule(user)
    if apply == "loss":
        ewc.loss_terms(SimpleNamespace(module=model))["ewc"].backward()  # type: ignore[arg-type]
    else:
        for p in user.parameters():
            p.grad = torch.zeros_like(p)
        ewc.on_before_optimizer_step(None, model, None)  # type: ignore[arg-type]
    grad = user.net[3].weight.grad
    torch.testing.assert_close(grad[:4], 2 * user.net[3].weight.detach()[:4])
    assert grad[4:].abs().sum() == 0


def test_ewc_beats_naive_on_permuted_digits() -> None:
    assert_beats_naive(EWC(ewc_lambda=10.0), margin=0.4)


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_checkpoint_round_trip(mode: str, tmp_path: Path) -> None:
    decay = 0.9 if mode == "online" else None
    checkpoint_round_trip(EWC(2.0, mode=mode, decay_factor=decay), EWC(2.0, mode=mode, decay_factor=decay), tmp_path)


def test_a_state_of_the_other_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode='separate', this EWC has mode='online'"):
        EWC(1.0, mode="online", decay_factor=0.5).load_state_dict({"mode": "separate", "fisher": [], "anchor": []})


def test_two_instances_do_not_collide() -> None:
    keys = {EWC(1.0).state_key, EWC(2.0).state_key, EWC(1.0, mode="online", decay_factor=0.5).state_key}
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ewc_lambda": -1.0}, ValueError, r"`ewc_lambda`: expected a non-negative number, got -1.0"),
        ({"ewc_lambda": "big"}, TypeError, r"`ewc_lambda`: expected a non-negative number, got str 'big'"),
        ({"ewc_lambda": float("nan")}, ValueError, r"`ewc_lambda`"),
        ({"ewc_lambda": 1.0, "mode": "both"}, ValueError, r"`mode`: expected one of \['separate', 'online'\], got 'bo"),
        ({"ewc_lambda": 1.0, "mode": "online"}, ValueError, r"`decay_factor`: mode='online' needs a decay factor"),
        ({"ewc_lambda": 1.0, "mode": "online", "decay_factor": 1.5}, ValueError, r"`decay_factor`: expected a num"),
        ({"ewc_lambda": 1.0, "decay_factor": 0.5}, ValueError, r"`decay_factor`: only used in mode='online'"),
        ({"ewc_lambda": 1.0, "apply": "both"}, ValueError, r"`apply`: expected one of \['loss', 'grad'\]"),
        ({"ewc_lambda": 1.0, "batch_size": 0}, ValueError, r"`batch_size`: expected a positive integer or None, got 0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EWC(**kwargs)


# ---------------------------------------------------------------------------------- two processes
def _worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    user = tiny_module()
    ewc = EWC(ewc_lambda=1.0, batch_size=7)
    trainer = quiet_trainer(devices=2, strategy="ddp", callbacks=[ewc])
    # 5 samples per class, 2 classes: 10 samples, so the ranks hold 5 samples each
    trainer.fit(ContinualModule(user), datamodule=make_tensor_stream(num_experiences=3, per_class=5, num_classes=6))
    torch.save({"fisher": ewc.state_dict()["fisher"][0], "weights": user.state_dict()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.ddp
def test_two_processes_compute_the_single_process_fisher(tmp_path: Path) -> None:
    ranks = two_process_results(_worker, tmp_path)
    assert_same_tensors(ranks[0]["fisher"], ranks[1]["fisher"], rtol=0, atol=0)
    user = tiny_module()
    user.load_state_dict(ranks[0]["weights"])
    dataset = make_tensor_stream(num_experiences=3, per_class=5, num_classes=6).train_stream[0].dataset
    assert_same_tensors(ranks[0]["fisher"], fisher_by_loop(user, dataset, False), rtol=1e-5, atol=1e-7)
