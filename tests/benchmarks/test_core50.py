"""CORe50 NI / NC / NIC over a small fake folder in the official 128x128 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lightning_cl.benchmarks.core50 import CORE50_TEST_SESSIONS, CORE50_TRAIN_SESSIONS, CORe50

OBJECTS = 20  # the fake folder holds objects 1..20 (4 categories), 2 frames per session and object
FRAMES = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """core50_128x128 with tiny 8x8 PNGs whose top-left pixel is (session, object, frame)."""
    base = tmp_path_factory.mktemp("core50")
    for s in range(1, 12):
        for o in range(1, OBJECTS + 1):
            folder = base / "core50_128x128" / f"s{s}" / f"o{o}"
            folder.mkdir(parents=True)
            for f in range(FRAMES):
                Image.new("RGB", (8, 8), color=(s, o, f)).save(folder / f"C_{s:02d}_{o:02d}_{f:03d}.png")
    return base


def pixel(img: Any) -> tuple[int, int, int]:
    return img.getpixel((0, 0))


def make(root: Path, **kwargs: Any) -> CORe50:
    return CORe50(root, num_objects=OBJECTS, train_transform=pixel, eval_transform=pixel, **kwargs)


def contents(experience: Any) -> list[tuple[int, int, int]]:
    """(session, object, label) of every item of an experience."""
    return [(x[0], x[1], int(y)) for x, y in (experience.dataset[i] for i in range(len(experience)))]


def test_official_defaults() -> None:
    nc, ni, nic = (CORe50("data", scenario=s) for s in ("nc", "ni", "nic"))
    assert (nc.num_experiences, ni.num_experiences, nic.num_experiences) == (9, 8, 72)
    assert nc.num_classes == 50 and CORe50("data", object_level=False).num_classes == 10
    assert CORE50_TEST_SESSIONS == (3, 7, 10) and len(CORE50_TRAIN_SESSIONS) == 8


def test_ni_one_training_session_per_experience(root: Path) -> None:
    dm = make(root, scenario="ni", seed=1)
    assert len(dm.train_stream) == 8 and len(dm.test_stream) == 1
    seen: list[int] = []
    for experience in dm.train_stream:
        items = contents(experience)
        sessions = {s for s, _, _ in items}
        assert len(sessions) == 1
        seen += sessions
        assert sorted({o for _, o, _ in items}) == list(range(1, OBJECTS + 1))
        assert len(items) == OBJECTS * FRAMES
        assert all(label == o - 1 for _, o, label in items)
        assert experience.classes_in_this_experience == tuple(range(OBJECTS))
    assert sorted(seen) == list(CORE50_TRAIN_SESSIONS)
    test = contents(dm.test_stream[0])
    assert sorted({s for s, _, _ in test}) == [3, 7, 10] and len(test) == 3 * OBJECTS * FRAMES


def test_nc_object_groups_and_test_split(root: Path) -> None:
    order = list(range(OBJECTS, 0, -1))
    dm = make(root, scenario="nc", object_order=order)
    assert len(dm.train_stream) == len(dm.test_stream) == 3  # 10 + 5 + 5 objects
    groups = [order[:10], order[10:15], order[15:]]
    for train, test, group in zip(dm.train_stream, dm.test_stream, groups, strict=True):
        assert (
            train.classes_in_this_experience == test.classes_in_this_experience == tuple(sorted(o - 1 for o in group))
        )
        items, test_items = contents(train), contents(test)
        assert {o for _, o, _ in items} == set(group) == {o for _, o, _ in test_items}
        assert {s for s, _, _ in items} == set(CORE50_TRAIN_SESSIONS)
        assert {s for s, _, _ in test_items} == set(CORE50_TEST_SESSIONS)
        assert len(items) == len(group) * 8 * FRAMES and len(test_items) == len(group) * 3 * FRAMES


def test_nc_category_level_labels(root: Path) -> None:
    dm = make(root, scenario="nc", object_level=False, seed=2)
    assert dm.num_classes == 4
    for experience in dm.train_stream:
        items = contents(experience)
        assert all(label == (o - 1) // 5 for _, o, label in items)
        assert experience.classes_in_this_experience == tuple(sorted({label for _, _, label in items}))


def test_nc_seeded_order(root: Path) -> None:
    def classes(seed: int) -> list[tuple[int, ...]]:
        return [e.classes_in_this_experience for e in make(root, scenario="nc", seed=seed).train_stream]

    assert classes(0) == classes(0)
    assert classes(0) != classes(1)


def test_nic_session_object_batches(root: Path) -> None:
    dm = make(root, scenario="nic", seed=4)
    assert len(dm.train_stream) == dm.num_experiences == 3 * 8 and len(dm.test_stream) == 1
    assert len(dm.train_stream[0].classes_in_this_experience) == 10
    pairs = set()
    for experience in dm.train_stream:
        items = contents(experience)
        sessions, objects = {s for s, _, _ in items}, frozenset(o for _, o, _ in items)
        assert len(sessions) == 1 and len(objects) in (5, 10)
        pairs.add((sessions.pop(), objects))
    assert len(pairs) == 24  # every (training session, object group) exactly once
    assert sum(len(e) for e in dm.train_stream) == 8 * OBJECTS * FRAMES


def test_default_transform_is_normalised_tensor(root: Path) -> None:
    dm = CORe50(root, scenario="nc", num_objects=OBJECTS)
    x, y = dm.train_stream[0].dataset[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert x.min() < 0  # ImageNet normalisation of near-black pixels
    assert int(y) in dm.train_stream[0].classes_in_this_experience


def test_missing_data_names_root_and_layout(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*core50_128x128/s\{1\.\.11\}"):
        CORe50(tmp_path / "nowhere").train_stream
    with pytest.raises(FileNotFoundError, match="o21"):  # the default reads all 50 objects
        CORe50(root).train_stream


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scenario": "nicv2"}, ValueError, "scenario"),
        ({"num_objects": 12}, ValueError, "num_objects"),
        ({"num_objects": 55}, ValueError, "num_objects"),
        ({"num_objects": 5}, ValueError, "num_objects"),
        ({"object_order": [1, 2]}, ValueError, "object_order"),
        ({"object_order": "12"}, TypeError, "object_order"),
        ({"train_transform": 1}, TypeError, "train_transform"),
        ({"root": 1}, TypeError, "root"),
        ({"task_labels": "yes"}, TypeError, "`task_labels`: expected a bool, got str"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CORe50(**{"root": "data", **kwargs})


def task_contents(experience: Any) -> set[int]:
    """The task labels of an experience's samples (they must be ``(x, y, t)``)."""
    samples = [experience.dataset[i] for i in range(len(experience))]
    assert all(len(sample) == 3 for sample in samples)
    return {int(sample[2]) for sample in samples}


def test_nc_task_labels_label_train_and_test_experiences(root: Path) -> None:
    dm = make(root, scenario="nc", seed=3, task_labels=True)
    assert dm.hparams["task_labels"] is True
    plain = make(root, scenario="nc", seed=3)
    for k, (train, test) in enumerate(zip(dm.train_stream, dm.test_stream, strict=True)):
        assert train.task_label == test.task_label == k
        assert task_contents(train) == task_contents(test) == {k}
        assert train.classes_in_this_experience == plain.train_stream[k].classes_in_this_experience
        assert [s[:2] for s in (train.dataset[i] for i in range(len(train)))] == [
            s for s in (plain.train_stream[k].dataset[i] for i in range(len(train)))
        ]


@pytest.mark.parametrize("scenario", ["ni", "nic"])
def test_single_test_set_is_repeated_once_per_task(root: Path, scenario: str) -> None:
    dm = make(root, scenario=scenario, seed=1, task_labels=True)
    assert len(dm.test_stream) == len(dm.train_stream) == dm.num_experiences
    whole = contents(make(root, scenario=scenario, seed=1).test_stream[0])
    for k in (0, dm.num_experiences - 1):
        assert dm.train_stream[k].task_label == dm.test_stream[k].task_label == k
        assert task_contents(dm.train_stream[k]) == task_contents(dm.test_stream[k]) == {k}
        test = dm.test_stream[k]
        assert [(x[0], x[1], int(y)) for x, y, _ in (test.dataset[i] for i in range(len(test)))] == whole


def test_without_task_labels_samples_are_pairs(root: Path) -> None:
    dm = make(root, scenario="ni")
    assert len(dm.test_stream) == 1 and len(dm.train_stream[0].dataset[0]) == 2
    assert {e.task_label for e in dm.train_stream} == {0}
