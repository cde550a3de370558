"""SplitOmniglot on the real images_background_small1 folder and on small fake folders."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_cl.benchmarks.omniglot import SplitOmniglot

SMALL1 = Path("/work/shared/data/Omniglot/images_background_small1.zip")


@pytest.fixture(scope="module")
def small1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SMALL1.is_file():
        pytest.skip(f"{SMALL1} is not here")
    root = tmp_path_factory.mktemp("omniglot")
    with zipfile.ZipFile(SMALL1) as archive:
        archive.extractall(root)
    return root


def fake(root: Path, drawings: int = 20, characters: int = 4) -> Path:
    for c in range(characters):
        path = root / "images_background" / f"Alphabet{c % 2}" / f"character{c:02d}"
        path.mkdir(parents=True)
        for k in range(drawings):
            Image.new("1", (105, 105), color=k % 2).save(path / f"{k:02d}.png")
    return root


@pytest.mark.parametrize("num_experiences", [8, 17])
def test_real_small1_counts_and_splits(small1: Path, num_experiences: int) -> None:
    dm = SplitOmniglot(small1, num_experiences=num_experiences, folder="images_background_small1", seed=3)
    per = 136 // num_experiences
    assert dm.num_classes == 136
    assert [len(e) for e in dm.train_stream] == [15 * per] * num_experiences
    assert [len(e) for e in dm.test_stream] == [5 * per] * num_experiences
    classes = [c for e in dm.train_stream for c in e.classes_in_this_experience]
    assert sorted(classes) == list(range(136))
    for train, test in zip(dm.train_stream, dm.test_stream, strict=True):
        assert train.classes_in_this_experience == test.classes_in_this_experience


def test_real_small1_images_and_disjoint_split(small1: Path) -> None:
    dm = SplitOmniglot(small1, num_experiences=8, folder="images_background_small1")
    x, y = dm.train_stream[0].dataset[0]
    assert x.shape == (1, 105, 105) and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}  # binary drawings
    assert y in dm.train_stream[0].classes_in_this_experience
    train, test = dm.load_datasets()
    assert len(train) == 136 * 15 and len(test) == 136 * 5  # type: ignore[arg-type]
    assert not set(train.paths) & set(test.paths)  # type: ignore[attr-defined]
    # class 0 is the first sorted (alphabet, character): drawings _01.._15 train, _16.._20 test
    first = [Path(p) for p, t in zip(train.paths, train.targets.tolist(), strict=True) if t == 0]  # type: ignore[attr-defined]
    assert [p.stem[-2:] for p in first] == [f"{k:02d}" for k in range(1, 16)]
    assert first[0].parent.parent.name == "Balinese"


def test_class_order_and_transforms(tmp_path: Path) -> None:
    root = fake(tmp_path)
    dm = SplitOmniglot(
        root,
        num_experiences=2,
        class_order=[3, 1, 0, 2],
        task_labels=True,
        train_transform=lambda img: torch.zeros(2),
        eval_transform=lambda img: torch.ones(3),
    )
    assert [e.classes_in_this_experience for e in dm.train_stream] == [(1, 3), (0, 2)]
    assert [e.task_label for e in dm.train_stream] == [0, 1]
    assert dm.train_stream[1].dataset[0][0].shape == (2,)
    assert dm.test_stream[1].dataset[0][0].shape == (3,)
    assert len(dm.train_stream[0]) == 30 and len(dm.test_stream[0]) == 10


def test_seeded_order_is_deterministic(tmp_path: Path) -> None:
    root = fake(tmp_path)
    orders = [
        [e.classes_in_this_experience for e in SplitOmniglot(root, num_experiences=4, seed=s).train_stream]
        for s in (5, 5)
    ]
    assert orders[0] == orders[1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_experiences": 0}, ValueError, "num_experiences"),
        ({"num_experiences": True}, ValueError, "num_experiences"),
        ({"class_order": "0123"}, TypeError, "class_order"),
        ({"folder": "images_test"}, ValueError, "folder"),
        ({"download": True}, ValueError, "download"),
        ({"train_transform": 3}, TypeError, "train_transform"),
        ({"root": 3}, TypeError, "root"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"root": tmp_path, "num_experiences": 2, **kwargs}
    with pytest.raises(error, match=match):
        SplitOmniglot(**args)


def test_missing_folder_names_root_and_layout(tmp_path: Path) -> None:
    dm = SplitOmniglot(tmp_path / "nowhere", num_experiences=2)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*<alphabet>/<character>"):
        dm.train_stream


def test_empty_folder_and_too_few_drawings(tmp_path: Path) -> None:
    (tmp_path / "a" / "images_background").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="character"):
        SplitOmniglot(tmp_path / "a", num_experiences=1).train_stream
    root = fake(tmp_path / "b", drawings=15, characters=2)
    with pytest.raises(ValueError, match=r"15 \.png drawings"):
        SplitOmniglot(root, num_experiences=1).train_stream


def test_num_experiences_must_divide_character_count(tmp_path: Path) -> None:
    dm = SplitOmniglot(fake(tmp_path), num_experiences=3)  # 4 characters
    with pytest.raises(ValueError, match="num_experiences"):
        dm.train_stream
