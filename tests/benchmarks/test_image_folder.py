"""image_folder and file_list: streams over a user's own image files."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.benchmarks.image_folder import ImageFiles, file_list, image_folder
from lightning_cl.core.data import SubsetDataset, collate
from tests.conftest import TinyClassifier, quiet_trainer

NAMES = ("cat", "dog", "emu", "owl")  # class ids 0..3, the sorted folder names


def write_tree(root: Path, per_class: int, names: tuple[str, ...] = NAMES) -> Path:
    """``root/<name>/<i>.png``: 4x6 RGB images whose red channel is the class id and green the index."""
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (6, 4), color=(NAMES.index(name) if name in NAMES else 99, i, 0)).save(
                root / name / f"{i}.png"
            )
    return root


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    return write_tree(tmp_path / "train", 3), write_tree(tmp_path / "test", 2)


def pixels(dataset: Any) -> torch.Tensor:
    """(red, green) of every sample, as the 0..255 values written."""
    x = collate([dataset[i] for i in range(len(dataset))])[0]
    return (x[:, :2, 0, 0] * 255).round().long()


def test_classes_are_the_sorted_folder_names_split_like_class_incremental(tree: tuple[Path, Path]) -> None:
    dm = image_folder(*tree, num_experiences=2, class_order=[3, 0, 2, 1])

    assert [e.classes_in_this_experience for e in dm.train_stream] == [(0, 3), (1, 2)]
    assert [len(e) for e in dm.train_stream] == [6, 6]
    assert [len(e) for e in dm.test_stream] == [4, 4]
    for stream in (dm.train_stream, dm.test_stream):
        for experience in stream:
            x, y = collate([experience.dataset[i] for i in range(len(experience))])
            assert x.shape[1:] == (3, 4, 6) and x.dtype == torch.float32  # ToTensor by default
            assert torch.equal(pixels(experience.dataset)[:, 0], y)  # the file of its class, red = class id


def test_targets_are_known_without_opening_an_image(tree: tuple[Path, Path]) -> None:
    opened: list[str] = []

    def loader(path: str) -> Image.Image:
        opened.append(path)
        return Image.open(path).convert("RGB")

    dm = image_folder(*tree, num_experiences=4, class_order=[0, 1, 2, 3], loader=loader)
    assert opened == [] and dm.num_classes == 4
    dataset = dm.train_stream[2].dataset
    assert isinstance(dataset, SubsetDataset) and isinstance(dataset.base, ImageFiles)  # the per-sample path
    dataset[1]
    assert opened == [str(tree[0] / "emu" / "1.png")]


def test_transforms_train_and_eval(tree: tuple[Path, Path]) -> None:
    def tagged(value: float) -> Any:
        return lambda image: torch.full((1, 2, 2), value)

    dm = image_folder(*tree, num_experiences=2, transform=tagged(1.0), train_transform=tagged(2.0))
    assert float(dm.train_stream[0].dataset[0][0].max()) == 2.0
    assert float(dm.test_stream[0].dataset[0][0].max()) == 1.0
    dm = image_folder(*tree, num_experiences=2, transform=tagged(1.0))
    assert float(dm.train_stream[0].dataset[0][0].max()) == 1.0


def test_a_test_folder_may_lack_classes_but_keeps_the_train_ids(tmp_path: Path) -> None:
    train = write_tree(tmp_path / "train", 2)
    test = write_tree(tmp_path / "test", 2, names=("cat", "owl"))  # ids 0 and 3, not 0 and 1
    dm = image_folder(train, test, num_experiences=2, class_order=[0, 1, 2, 3], task_labels=True)
    for k, expected in enumerate(([0, 0], [3, 3])):
        _, y, t = collate([dm.test_stream[k].dataset[i] for i in range(2)])
        assert y.tolist() == expected and t.tolist() == [k, k]
        assert torch.equal(pixels(dm.test_stream[k].dataset)[:, 0], y)


def test_batches_through_a_loader_with_workers(tree: tuple[Path, Path]) -> None:
    dm = image_folder(*tree, num_experiences=2, class_order=[0, 1, 2, 3], num_workers=1)
    loader = DataLoader(dm.train_stream[0].dataset, batch_size=4, num_workers=1, collate_fn=collate)
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 4, 6)


def test_trains_with_a_real_trainer(tree: tuple[Path, Path]) -> None:
    dm = image_folder(*tree, num_experiences=2, class_order=[0, 1, 2, 3], batch_size=4)
    torch.manual_seed(0)
    model = ContinualModule(TinyClassifier(in_features=3 * 4 * 6, num_classes=4))
    result = fit_stream(quiet_trainer(max_epochs=2), model, dm)
    assert result.accuracy_matrix.shape == (2, 2)


def test_missing_and_empty_folders_are_named(tmp_path: Path) -> None:
    train = write_tree(tmp_path / "train", 1)
    with pytest.raises(FileNotFoundError, match=r"`train_root`: no folder at '.*nowhere'"):
        image_folder(tmp_path / "nowhere", train, num_experiences=2)
    with pytest.raises(FileNotFoundError, match=r"`test_root`: no folder at"):
        image_folder(train, tmp_path / "nowhere", num_experiences=2)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "flat" / "0.png")
    with pytest.raises(FileNotFoundError, match=r"`train_root`: '.*flat' holds no class folder"):
        image_folder(tmp_path / "flat", train, num_experiences=2)
    (train / "zebra").mkdir()
    (train / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"`train_root`: the class folders \['zebra'\] of .* hold no image"):
        image_folder(train, train, num_experiences=2)


def test_empty_test_folder_and_unknown_test_classes(tmp_path: Path) -> None:
    train = write_tree(tmp_path / "train", 1)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"`test_root`: the class folders \['cat'\] .* hold no image"):
        image_folder(train, tmp_path / "test", num_experiences=2)
    other = write_tree(tmp_path / "other", 1, names=("cat", "yak"))
    with pytest.raises(ValueError, match=r"`test_root`: class folders \['yak'\] of .* are not train classes"):
        image_folder(train, other, num_experiences=2)


def test_file_list_from_pairs_and_from_a_text_file(tree: tuple[Path, Path], tmp_path: Path) -> None:
    train_root, _ = tree
    pairs = [(f"{name}/{i}.png", c) for c, name in enumerate(NAMES) for i in range(3)]
    from_pairs = file_list(pairs, pairs[::3], root=train_root, num_experiences=2, class_order=[0, 1, 2, 3])
    listing = train_root / "train.txt"
    listing.write_text("\n".join(f"{path} {c}" for path, c in pairs) + "\n\n")
    from_text = file_list(listing, listing, num_experiences=2, class_order=[0, 1, 2, 3])
    for dm in (from_pairs, from_text):
        assert [len(e) for e in dm.train_stream] == [6, 6]
        experience = dm.train_stream[1]
        assert torch.equal(pixels(experience.dataset)[:, 0], torch.tensor([2, 2, 2, 3, 3, 3]))
    assert [len(e) for e in from_pairs.test_stream] == [2, 2]


def test_file_list_errors(tmp_path: Path) -> None:
    Image.new("RGB", (2, 2)).save(tmp_path / "a.png")
    good = [(tmp_path / "a.png", 0), (tmp_path / "a.png", 1)]
    with pytest.raises(FileNotFoundError, match=r"`train_files`: 1 of 3 files are missing, e.g. \['.*b.png'\]"):
        file_list([*good, (tmp_path / "b.png", 1)], good, num_experiences=2)
    with pytest.raises(ValueError, match="`test_files`: expected at least one"):
        file_list(good, [], num_experiences=2)
    with pytest.raises(TypeError, match=r"`train_files\[1\]`: expected a \(path, class id\) pair"):
        file_list([good[0], (tmp_path / "a.png", "1")], good, num_experiences=2)
    with pytest.raises(TypeError, match="`train_files`: expected"):
        file_list(7, good, num_experiences=2)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="`train_files`: no file list at"):
        file_list(tmp_path / "list.txt", good, num_experiences=2)
    (tmp_path / "list.txt").write_text("a.png\n")
    with pytest.raises(ValueError, match=r"`train_files`: line 1 of .* is not '<path> <class id>'"):
        file_list(tmp_path / "list.txt", good, num_experiences=2)


@pytest.mark.data
def test_the_cifar10_test_split_as_jpeg_folders(shared_data: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(shared_data / "CIFAR10" / "cifar10_test_jpg.zip") as archive:
        archive.extractall(tmp_path)
    root = tmp_path / "cifar10_test_jpg"
    dm = image_folder(root, root, num_experiences=5, class_order=range(10), batch_size=500)

    assert [e.classes_in_this_experience for e in dm.train_stream] == [(2 * k, 2 * k + 1) for k in range(5)]
    assert [len(e) for e in dm.test_stream] == [2000] * 5
    assert dm.train_stream[0].dataset.base.paths[0].endswith("airplane/0000.jpg")  # type: ignore[attr-defined]
    # the per-channel mean of the decoded JPEGs is the known CIFAR-10 test mean (data README)
    total = torch.zeros(3, dtype=torch.float64)
    for experience in dm.test_stream:
        for x, _ in DataLoader(experience.dataset, batch_size=500, collate_fn=collate):
            total += x.double().sum(dim=(0, 2, 3))
    mean = total / (10_000 * 32 * 32)
    assert mean.tolist() == pytest.approx([0.4941, 0.4851, 0.4504], abs=1e-4)
