"""online: one pass per experience in mini-experiences, ONE fit per experience."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cl import ContinualCallback, ContinualModule, fit_stream
from lightning_cl.benchmarks.class_incremental import class_incremental
from lightning_cl.benchmarks.online import MiniExperienceBoundaries, OnlineStreamDataModule, OrderedSampler, online
from lightning_cl.core.callback import JointData
from lightning_cl.core.data import InMemoryDataset, collate
from lightning_cl.core.experience import Experience
from tests.conftest import TinyClassifier, quiet_trainer

SIZES = (30, 24)  # samples per experience: 30 is not a multiple of the mini-experience size


class GenericDataset(Dataset):
    """A user's dataset: ``(tensor, int)`` samples, no ``.targets``, no ``__getitems__``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def stream(kind: str = "tensor", batch_size: int = 8) -> Any:
    """Two experiences (classes 0-1, then 2-3); x is ``[row, y, noise...]`` (8 features)."""
    y = torch.cat([torch.arange(2).repeat(SIZES[0] // 2), torch.arange(2, 4).repeat(SIZES[1] // 2)])
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.arange(len(y)).float()[:, None], y.float()[:, None], torch.randn(len(y), 6, generator=g)], 1)
    data = InMemoryDataset(x, y) if kind == "tensor" else GenericDataset(x, y)
    return class_incremental(data, data, num_experiences=2, class_order=[0, 1, 2, 3], batch_size=batch_size)


def rows(dataset: Dataset) -> list[int]:
    return collate([dataset[i] for i in range(len(dataset))])[0][:, 0].long().tolist()  # type: ignore[arg-type]


class Recorder(TinyClassifier):
    """Records the rows of every training batch, with the mini-experience the datamodule reports."""

    def __init__(self) -> None:
        super().__init__(in_features=8, num_classes=4)
        self.batches: list[tuple[int, int | None, list[int]]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        dm = self.trainer.datamodule
        self.batches.append((dm.current_experience, dm.current_mini_experience, batch[0][:, 0].long().tolist()))
        return super().training_step(batch, batch_idx)


class Boundaries(L.Callback):
    """A CL method that wants the mini-experience boundaries."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int, int]] = []
        self.datasets: dict[tuple[int, int], Dataset] = {}

    def on_mini_experience_start(self, trainer: L.Trainer, pl_module: Any, mini: Experience) -> None:
        self.events.append(("start", trainer.datamodule.current_experience, mini.index, len(mini)))  # type: ignore[attr-defined]
        self.datasets[(trainer.datamodule.current_experience, mini.index)] = mini.dataset  # type: ignore[attr-defined]

    def on_mini_experience_end(self, trainer: L.Trainer, pl_module: Any, mini: Experience) -> None:
        self.events.append(("end", trainer.datamodule.current_experience, mini.index, len(mini)))  # type: ignore[attr-defined]


quiet = quiet_trainer


@pytest.mark.parametrize(("experience_size", "batch_size"), [(8, 8), (8, 4), (5, 1)])
def test_one_fit_per_experience_trains_exactly_one_pass(experience_size: int, batch_size: int) -> None:
    dm = online(stream(), experience_size, batch_size=batch_size)
    user = Recorder()
    model, trainer = ContinualModule(user), quiet()
    steps = []
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
        steps.append(trainer.global_step)
    assert steps == [
        math.ceil(SIZES[0] / batch_size),
        math.ceil(SIZES[0] / batch_size) + math.ceil(SIZES[1] / batch_size),
    ]
    seen = [row for _, _, batch in user.batches for row in batch]
    assert seen == list(range(sum(SIZES)))  # each sample once, in the experience's order


@pytest.mark.parametrize("kind", ["tensor", "generic"])
def test_mini_experience_m_is_samples_m_size_to_m_plus_one_size(kind: str) -> None:
    dm = online(stream(kind), 8, batch_size=4, shuffle=True, seed=3)
    user = Recorder()
    fit_stream(quiet(), ContinualModule(user), dm, evaluate_initial=False)

    for k in range(2):
        order = rows(dm.train_stream[k].dataset)
        minis = dm.mini_experiences(k)
        assert len(minis) == dm.num_mini_experiences(k) == math.ceil(SIZES[k] / 8)
        assert [rows(m.dataset) for m in minis] == [order[i : i + 8] for i in range(0, SIZES[k], 8)]
        for m, mini in enumerate(minis):
            trained = [row for e, index, batch in user.batches if (e, index) == (k, m) for row in batch]
            assert trained == rows(mini.dataset)
            assert mini.classes_in_this_experience == tuple(sorted(set(_classes(mini))))
    assert dm.current_mini_experience is None  # outside training


def _classes(mini: Experience) -> list[int]:
    return collate([mini.dataset[i] for i in range(len(mini))])[1].tolist()  # type: ignore[arg-type]


def test_shuffle_is_a_seeded_permutation_of_each_experience() -> None:
    def orders(seed: int | None, shuffle: bool = True) -> list[list[int]]:
        dm = online(stream(), 8, shuffle=shuffle, seed=seed)
        return [rows(e.dataset) for e in dm.train_stream]

    assert orders(None, shuffle=False) == [list(range(SIZES[0])), list(range(SIZES[0], sum(SIZES)))]
    assert orders(1) == orders(1) != orders(2)
    assert [sorted(o) for o in orders(1)] == orders(None, shuffle=False)


def test_boundaries_reach_every_callback_that_asks() -> None:
    dm = online(stream(), 8, batch_size=4)
    recorder = Boundaries()
    trainer = quiet(callbacks=[recorder])
    fit_stream(trainer, ContinualModule(TinyClassifier(in_features=8, num_classes=4)), dm, evaluate_initial=False)

    expected = []
    for k, n in enumerate(SIZES):
        for m in range(math.ceil(n / 8)):
            size = min(8, n - 8 * m)
            expected += [("start", k, m, size), ("end", k, m, size)]
    assert recorder.events == expected
    assert sum(isinstance(c, MiniExperienceBoundaries) for c in trainer.callbacks) == 1  # added once, not per fit


def test_the_trainer_epoch_budget_is_replaced_by_one_pass() -> None:
    dm = online(stream(), 8)
    trainer = quiet(max_epochs=3)
    with pytest.warns(UserWarning, match="trains ONE pass per experience; the Trainer's max_epochs=3"):
        trainer.fit(ContinualModule(TinyClassifier(in_features=8, num_classes=4)), datamodule=dm)
    assert trainer.current_epoch == 1 and trainer.global_step == math.ceil(SIZES[0] / 8)


def test_in_memory_inputs_keep_the_fast_path() -> None:
    dm = online(stream(), 8, shuffle=True)
    for k in range(2):
        assert isinstance(dm.train_stream[k].dataset, InMemoryDataset)
        assert all(isinstance(m.dataset, InMemoryDataset) for m in dm.mini_experiences(k))
    assert dm.test_stream is dm.stream.test_stream


class Memory(ContinualCallback):
    """Replay alongside: a joint loader of two samples per step."""

    def joint_datasets(self, datamodule: Any, experience: Experience) -> dict[str, JointData]:
        return {"memory": JointData(InMemoryDataset(torch.zeros(3, 8), torch.zeros(3, dtype=torch.long)), 2)}

    def loss_terms(self, step: Any) -> dict[str, Tensor]:
        self.extra_sizes = [*getattr(self, "extra_sizes", []), len(step.extra["memory"][1])]
        return {}


def test_joint_datasets_are_drawn_alongside_without_changing_the_pass() -> None:
    dm = online(stream(), 8)
    memory = Memory()
    trainer = quiet(callbacks=[memory])
    trainer.fit(ContinualModule(TinyClassifier(in_features=8, num_classes=4)), datamodule=dm)
    assert trainer.global_step == math.ceil(SIZES[0] / 8)
    assert memory.extra_sizes == [2] * trainer.global_step


class Shrink(ContinualCallback):
    def train_dataset(self, datamodule: Any, experience: Experience, dataset: Dataset) -> Dataset:
        return dataset.subset([0, 1])  # type: ignore[attr-defined]


def test_a_train_dataset_that_changes_the_samples_is_an_error() -> None:
    trainer = quiet(callbacks=[Shrink()])
    with pytest.raises(ValueError, match=r"Shrink\.train_dataset: an online stream trains each sample once"):
        trainer.fit(ContinualModule(TinyClassifier(in_features=8, num_classes=4)), datamodule=online(stream(), 8))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0,), {}, ValueError, "`experience_size`: expected a positive integer, got 0"),
        ((-3,), {}, ValueError, "`experience_size`: expected a positive integer, got -3"),
        ((True,), {}, ValueError, "`experience_size`: expected a positive integer, got True"),
        ((2.5,), {}, ValueError, "`experience_size`: expected a positive integer, got 2.5"),
        ((8,), {"batch_size": 3}, ValueError, r"`batch_size`: expected a divisor of `experience_size` \(8\)"),
        ((8,), {"batch_size": 0}, ValueError, "`batch_size`: expected a positive integer, got 0"),
    ],
)
def test_bad_arguments(args: tuple, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        online(stream(), *args, **kwargs)


def test_not_a_stream() -> None:
    with pytest.raises(TypeError, match="`datamodule`: expected a StreamDataModule, got int"):
        OnlineStreamDataModule(3, 8)  # type: ignore[arg-type]


def test_checkpoint_round_trip_and_resume(tmp_path: Any) -> None:
    dm = online(stream(), 8, shuffle=True, seed=2)
    trainer = quiet()
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=4))
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "exp0.ckpt")
    saved = torch.load(tmp_path / "exp0.ckpt", weights_only=True)["OnlineStreamDataModule"]
    assert saved["online"] == {
        "experience_size": 8,
        "batch_size": 8,
        "shuffle": True,
        "seed": 2,
        "train_passes": 1,
        "access_task_boundaries": True,
    }

    again = online(stream(), 8, shuffle=True, seed=2)
    again.load_state_dict(dm.state_dict())
    assert again.state_dict() == dm.state_dict() and again.current_experience == 1
    with pytest.raises(ValueError, match="The checkpoint is from another online stream"):
        online(stream(), 4, shuffle=True, seed=2).load_state_dict(dm.state_dict())

    resumed = online(stream(), 8, shuffle=True, seed=2)
    trainer = quiet()
    fit_stream(
        trainer,
        ContinualModule(TinyClassifier(in_features=8, num_classes=4)),
        resumed,
        ckpt_path=tmp_path / "exp0.ckpt",
    )
    assert resumed.completed_experiences == 2
    assert trainer.global_step == math.ceil(SIZES[0] / 8) + math.ceil(SIZES[1] / 8)


# ------------------------------------------------------------------------------ train_passes
@pytest.mark.parametrize(("experience_size", "batch_size", "passes"), [(8, 8, 3), (8, 4, 2), (5, 1, 2)])
def test_train_passes_repeat_each_mini_experience_in_one_fit(
    experience_size: int, batch_size: int, passes: int
) -> None:
    dm = online(stream(), experience_size, batch_size=batch_size, train_passes=passes)
    user, recorder = Recorder(), Boundaries()
    trainer = quiet(callbacks=[recorder])
    model = ContinualModule(user)
    fits = 0
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
        fits += 1
    assert fits == dm.num_experiences == 2 and trainer.current_epoch == 2  # one epoch per experience
    expected_rows, expected_minis = [], []
    start = 0
    for k, n in enumerate(SIZES):
        for m in range(math.ceil(n / experience_size)):
            rows_m = list(range(start + m * experience_size, start + min((m + 1) * experience_size, n)))
            expected_rows += rows_m * passes
            expected_minis += [(k, m)] * (len(rows_m) * passes)
        start += n
    seen = [row for _, _, batch in user.batches for row in batch]
    assert seen == expected_rows
    minis = [(k, m) for k, m, batch in user.batches for _ in batch]
    assert minis == expected_minis  # the reported mini-experience follows the passes
    assert trainer.global_step == sum(
        math.ceil(min(experience_size, n - s) * passes / batch_size)
        for n in SIZES
        for s in range(0, n, experience_size)
    )
    # the boundaries are still one start and one end per mini-experience
    assert [e[:3] for e in recorder.events if e[0] == "start"] == [
        ("start", k, m) for k, n in enumerate(SIZES) for m in range(math.ceil(n / experience_size))
    ]


def test_training_order_repeats_each_mini_experience() -> None:
    dm = online(stream(), 4, train_passes=3)
    assert dm.training_order(6).tolist() == [0, 1, 2, 3] * 3 + [4, 5] * 3
    assert online(stream(), 4).training_order(6).tolist() == list(range(6))


@pytest.mark.parametrize(("world", "expected"), [(1, [[3, 1, 4, 1, 5]]), (2, [[3, 4, 5], [1, 1, 3]])])
def test_ordered_sampler_shards_runs_of_consecutive_entries(world: int, expected: list[list[int]]) -> None:
    order = torch.tensor([3, 1, 4, 1, 5])
    assert [list(OrderedSampler(order, world, rank)) for rank in range(world)] == expected


# ------------------------------------------------------------------------ boundary-free streams
class ExperienceHooks(ContinualCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_experience_start(self, trainer: L.Trainer, pl_module: Any, experience: Any) -> None:
        self.events.append(("start", experience.index))

    def on_experience_end(self, trainer: L.Trainer, pl_module: Any, experience: Any) -> None:
        self.events.append(("end", experience.index))


@pytest.mark.parametrize("access", [True, False])
def test_boundary_free_stream_hides_the_original_experiences(access: bool) -> None:
    dm = online(stream(), 8, batch_size=4, access_task_boundaries=access, train_passes=2)
    recorder, hooks = Boundaries(), ExperienceHooks()
    user = TinyClassifier(in_features=8, num_classes=4)
    trainer = quiet(callbacks=[recorder, hooks])
    model = ContinualModule(user)
    for _ in range(2):
        trainer.fit(model, datamodule=dm)
    # mini-experiences are always seen; the original boundaries only with access_task_boundaries
    starts = [e for e in recorder.events if e[0] == "start"]
    assert len(starts) == sum(-(-n // 8) for n in SIZES)
    assert hooks.events == ([("start", 0), ("end", 0), ("start", 1), ("end", 1)] if access else [])
    # still one fit, one epoch, per original experience, with every pass
    assert dm.completed_experiences == 2 and trainer.current_epoch == 2
    assert trainer.global_step == sum(2 * n // 4 for n in SIZES)
    assert dm.state_dict()["online"]["access_task_boundaries"] is access


def test_an_older_checkpoint_without_the_new_settings_loads() -> None:
    dm = online(stream(), 8)
    state = dm.state_dict()
    state["online"] = {k: v for k, v in state["online"].items() if k not in ("train_passes", "access_task_boundaries")}
    dm.load_state_dict(state)
    with pytest.raises(ValueError, match="another online stream"):
        online(stream(), 8, train_passes=2).load_state_dict(state)


def test_an_online_stream_cannot_balance() -> None:
    dm = online(stream(), 8)
    dm.balance = "class"
    with pytest.raises(ValueError, match="`balance`: an online stream trains its samples once"):
        quiet().fit(ContinualModule(TinyClassifier(in_features=8, num_classes=4)), datamodule=dm)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"train_passes": 0}, ValueError, "`train_passes`: expected a positive integer, got 0"),
        ({"train_passes": 1.5}, ValueError, "`train_passes`: expected a positive integer, got 1.5"),
        ({"access_task_boundaries": "no"}, TypeError, "`access_task_boundaries`: expected a bool, got str"),
    ],
)
def test_bad_online_settings(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        online(stream(), 8, **kwargs)


def test_subsampled_stream_keeps_a_seeded_subset_of_each_experience() -> None:
    from lightning_cl.benchmarks import SplitDigits, SubsampledStream

    base = SplitDigits(num_experiences=5, class_order=list(range(10)))
    small = SubsampledStream(base, samples_per_experience=50, seed=3)
    again = SubsampledStream(SplitDigits(num_experiences=5, class_order=list(range(10))), 50, seed=3)
    assert [len(e) for e in small.train_stream] == [50] * 5
    assert small.test_stream is base.test_stream
    for a, b, e in zip(small.train_stream, again.train_stream, base.train_stream):
        assert torch.equal(a.dataset[7][0], b.dataset[7][0])
        assert set(a.classes_in_this_experience) == set(e.classes_in_this_experience)
    # online on top: one pass over the 50 samples of each experience
    dm = online(small, experience_size=10)
    assert dm.num_mini_experiences(0) == 5
    with pytest.raises(ValueError, match="samples_per_experience"):
        SubsampledStream(base, samples_per_experience=0)
