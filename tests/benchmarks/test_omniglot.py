"""SplitOmniglot on the real images_background_small1 folder (read, and downloaded from a staged zip) and on fakes."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_cl.benchmarks.omniglot import OMNIGLOT_MD5, OMNIGLOT_URL, SplitOmniglot, download_omniglot
from tests.benchmarks.test_fmnist import offline  # noqa: F401  (fixture)

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


# ------------------------------------------------------------------------------ download path
def stage_zip(tmp_path: Path) -> Path:
    """A root holding the real images_background_small1.zip, as a finished download leaves it."""
    if not SMALL1.is_file():
        pytest.skip(f"{SMALL1} is not here")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(SMALL1, root / SMALL1.name)
    return root


def test_md5_table_and_url_are_torchvisions() -> None:
    assert OMNIGLOT_URL == "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
    assert OMNIGLOT_MD5["images_background"] == "68d2efa1b9178cc56df9314c21c6e718"
    assert OMNIGLOT_MD5["images_background_small1"] == "e704a628b5459e08445c13499850abc4"


def test_prepare_data_checks_and_extracts_a_staged_zip_offline(tmp_path: Path, offline: list[object]) -> None:  # noqa: F811
    root = stage_zip(tmp_path)
    dm = SplitOmniglot(root, num_experiences=8, folder="images_background_small1")  # download=True by default
    dm.prepare_data()
    assert not offline  # the md5 matched: no connection was attempted
    assert len(list((root / "images_background_small1").glob("*/*/*.png"))) == 136 * 20
    assert dm.num_classes == 136 and [len(e) for e in dm.train_stream] == [15 * 17] * 8
    (root / SMALL1.name).unlink()
    dm.prepare_data()  # the folder is there: nothing to fetch, the zip is not needed any more
    assert not offline


def test_a_corrupt_zip_fails_its_md5_check(tmp_path: Path, offline: list[object]) -> None:  # noqa: F811
    root = stage_zip(tmp_path)
    archive = root / SMALL1.name
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError) as error:
        SplitOmniglot(root, num_experiences=8, folder="images_background_small1").prepare_data()
    message = str(error.value)
    assert message.startswith("SplitOmniglot: could not download")
    assert f"{OMNIGLOT_URL}/images_background_small1.zip" in message and str(root) in message
    assert "images_background_small1.zip fails its md5 check (expected e704a628b5459e08445c13499850abc4)" in message
    assert offline  # torchvision tried to fetch a good copy
    assert not (root / "images_background_small1").exists()


def test_offline_with_no_files_names_the_data_set_folder_and_archive(tmp_path: Path, offline: list[object]) -> None:  # noqa: F811
    with pytest.raises(FileNotFoundError) as error:
        SplitOmniglot(tmp_path, num_experiences=2, folder="images_evaluation").prepare_data()
    message = str(error.value)
    assert message.startswith("SplitOmniglot:") and str(tmp_path) in message
    assert "images_evaluation.zip is missing" in message and "md5 6b91aef0f799c5bb55b94e3f2daec811" in message


def test_download_false_fetches_nothing(tmp_path: Path, offline: list[object]) -> None:  # noqa: F811
    SplitOmniglot(tmp_path, num_experiences=2, download=False).prepare_data()
    assert not offline and not list(tmp_path.iterdir())


def test_torchvisions_layout_is_read_and_not_downloaded_again(tmp_path: Path, offline: list[object]) -> None:  # noqa: F811
    fake(tmp_path / "omniglot-py")  # where torchvision's Omniglot(root, download=True) extracts
    dm = SplitOmniglot(tmp_path, num_experiences=2)
    dm.prepare_data()
    assert not offline
    assert [len(e) for e in dm.train_stream] == [30, 30]


def test_download_omniglot_rejects_an_unknown_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`folder`: expected one of"):
        download_omniglot(tmp_path, "images_test")
