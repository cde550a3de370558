"""Rotate (batched rotation) and RotatedMNIST on the real MNIST files."""

from __future__ import annotations

import math
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode

from lightning_cl.benchmarks.mnist import MNIST_MEAN, MNIST_STD
from lightning_cl.benchmarks.rotated_mnist import RotatedMNIST, draw_rotations
from lightning_cl.benchmarks.transforms import Compose, Normalize, Rotate
from lightning_cl.core.data import InMemoryDataset, collate

BACKGROUND = -MNIST_MEAN / MNIST_STD


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def reference(x: torch.Tensor, angle: float) -> torch.Tensor:
    """torchvision's rotation of a tensor: bilinear, zeros outside, counter-clockwise."""
    return TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR)


# --- Rotate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 7])
@pytest.mark.parametrize("quarter_turns", [1, 2, 3, -1])
def test_right_angles_are_rot90(size: int, quarter_turns: int) -> None:
    x = images(5, 1, size, size)
    torch.testing.assert_close(Rotate(90 * quarter_turns)(x), torch.rot90(x, quarter_turns, dims=(-2, -1)))


@pytest.mark.parametrize("angle", [0, 360, -720])
def test_whole_turns_are_the_identity(angle: float) -> None:
    x = images(3, 2, 28, 28)
    torch.testing.assert_close(Rotate(angle)(x), x)


def test_positive_angles_turn_counter_clockwise() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right of the centre
    y = Rotate(90)(x)
    assert y[0, 0].argmax() == 0 * 5 + 2  # now above it
    assert float(y[0, 0, 0, 2]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("angle", [30.0, 45.0, 123.4, -17.5])
@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (2, 3, 10, 17)])
def test_matches_torchvision(angle: float, shape: tuple[int, ...]) -> None:
    x = images(*shape)
    torch.testing.assert_close(Rotate(angle)(x), reference(x, angle), rtol=0, atol=1e-5)


def test_corners_are_zero_padded() -> None:
    y = Rotate(45)(torch.ones(2, 1, 28, 28))
    assert float(y[:, :, 0, 0].abs().max()) == 0.0
    assert float(y[:, :, 14, 14].min()) == pytest.approx(1.0)


def test_a_sample_is_the_row_of_its_batch() -> None:
    x = images(6, 1, 28, 28)
    rotate = Rotate(33.0)
    batch = rotate(x)
    torch.testing.assert_close(rotate(x[4:5])[0], batch[4], rtol=0, atol=1e-6)
    torch.testing.assert_close(rotate(x[4]), batch[4], rtol=0, atol=1e-6)  # a single [C, H, W] image


def test_uint8_images_become_floats() -> None:
    x = (images(2, 1, 28, 28) * 255).to(torch.uint8)
    y = Rotate(90)(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.rot90(x.float(), 1, dims=(-2, -1)), rtol=0, atol=1e-3)


def test_rotate_pickles() -> None:
    x = images(2, 1, 8, 8)
    rotate = pickle.loads(pickle.dumps(Rotate(20)))
    assert repr(rotate) == "Rotate(angle=20.0)"
    torch.testing.assert_close(rotate(x), Rotate(20)(x))


@pytest.mark.parametrize(
    ("angle", "error", "match"),
    [
        ("90", TypeError, "`angle`: expected a number of degrees, got str"),
        (True, TypeError, "`angle`: expected a number of degrees, got bool"),
        (math.nan, ValueError, "`angle`: expected a finite number of degrees, got nan"),
        (math.inf, ValueError, "`angle`: expected a finite number of degrees, got inf"),
    ],
)
def test_rotate_bad_angles(angle: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Rotate(angle)  # type: ignore[arg-type]


def test_rotate_needs_images() -> None:
    with pytest.raises(ValueError, match=r"Rotate: expected images \[\.\.\., H, W\], got shape \(5,\)"):
        Rotate(10)(torch.zeros(5))


def test_compose_applies_in_order_and_pickles() -> None:
    compose = pickle.loads(pickle.dumps(Compose([Rotate(90), Normalize([0.5], [2.0])])))
    x = images(2, 1, 4, 4)
    torch.testing.assert_close(compose(x), (torch.rot90(x, 1, dims=(-2, -1)) - 0.5) / 2.0)


@pytest.mark.parametrize(
    ("transforms", "match"),
    [(Rotate(1), "`transforms`: expected a sequence of callables, got Rotate"), ([Rotate(1), 3], r"`transforms\[1\]`")],
)
def test_compose_bad_transforms(transforms: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Compose(transforms)  # type: ignore[arg-type]


# --- RotatedMNIST without data -------------------------------------------------------------------


def test_rotations_are_drawn_with_the_seed(tmp_path: Path) -> None:
    dm = RotatedMNIST(root=tmp_path, seed=3, download=False)
    assert dm.num_experiences == 10 and dm.num_classes == 10
    assert len(dm.rotations) == 10
    assert all(0.0 <= a < 180.0 for a in dm.rotations)
    assert len(set(dm.rotations)) == 10
    assert dm.rotations == RotatedMNIST(root=tmp_path, seed=3).rotations == draw_rotations(10, 3)
    assert dm.rotations != RotatedMNIST(root=tmp_path, seed=4).rotations
    # a longer stream starts with the same angles: the draw is one sequence per seed
    assert RotatedMNIST(root=tmp_path, num_experiences=12, seed=3).rotations[:10] == dm.rotations
    assert dm.hparams["seed"] == 3 and dm.hparams["rotations"] is None


def test_given_rotations_are_used(tmp_path: Path) -> None:
    dm = RotatedMNIST(root=tmp_path, num_experiences=3, rotations=[0, 90, 270.5], download=False)
    assert dm.rotations == [0.0, 90.0, 270.5]
    assert dm.hparams["rotations"] == [0, 90, 270.5]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rotations": [0, 90]}, ValueError, r"`rotations`: expected 10 angles \(one per experience"),
        ({"num_experiences": 2, "rotations": [0, 90, 180]}, ValueError, "`rotations`: expected 2 angles"),
        ({"num_experiences": 2, "rotations": 90}, TypeError, "`rotations`: expected a sequence of angles"),
        ({"num_experiences": 2, "rotations": [0, "90"]}, TypeError, r"`rotations\[1\]`: expected a number"),
        ({"num_experiences": 2, "rotations": [math.inf, 0]}, ValueError, r"`rotations\[0\]`: expected a finite"),
        ({"num_experiences": 0}, ValueError, "`num_experiences`: expected a positive integer, got 0"),
        ({"num_experiences": 2.5}, ValueError, "`num_experiences`: expected a positive integer, got 2.5"),
        ({"batch_size": -3}, ValueError, "`batch_size`"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RotatedMNIST(root=tmp_path, download=False, **kwargs)  # type: ignore[arg-type]


def test_missing_data_names_the_folder_and_files(tmp_path: Path) -> None:
    dm = RotatedMNIST(root=tmp_path, num_experiences=2, download=False)
    with pytest.raises(FileNotFoundError) as error:
        dm.train_stream
    message = str(error.value)
    assert message.startswith("MNIST:") and str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


def test_offline_download_names_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(FileNotFoundError, match=r"MNIST: could not download .*train-images-idx3-ubyte.gz is missing"):
        RotatedMNIST(root=tmp_path, num_experiences=2, download=True).prepare_data()


# --- RotatedMNIST on the real files ------------------------------------------------------------


@pytest.fixture(scope="module")
def rotated(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> RotatedMNIST:
    root = tmp_path_factory.mktemp("rotated_mnist")
    shutil.copytree(mnist_root / "MNIST", root / "MNIST")
    dm = RotatedMNIST(root=root, num_experiences=3, rotations=[0.0, 90.0, 37.0], task_labels=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", lambda *args: pytest.fail("prepare_data used the network"))
        dm.prepare_data()  # extracts the staged archives
    return dm


@pytest.mark.data
def test_streams(rotated: RotatedMNIST) -> None:
    assert [len(e) for e in rotated.train_stream] == [60000] * 3
    assert [len(e) for e in rotated.test_stream] == [10000] * 3
    assert all(e.classes_in_this_experience == tuple(range(10)) for e in rotated.train_stream)
    assert [e.task_label for e in rotated.train_stream] == [0, 1, 2]
    datasets = [e.dataset for e in rotated.train_stream]
    assert all(isinstance(d, InMemoryDataset) and d.inputs is datasets[0].inputs for d in datasets)  # type: ignore[attr-defined]
    assert datasets[0].inputs.dtype == torch.uint8  # type: ignore[attr-defined]


@pytest.mark.data
def test_state_records_the_seed_and_rotations(rotated: RotatedMNIST) -> None:
    state = rotated.state_dict()
    assert (state["seed"], state["rotations"]) == (0, [0.0, 90.0, 37.0])
    same = RotatedMNIST(root=rotated.root, num_experiences=3, rotations=[0, 90, 37], download=False)
    same.load_state_dict({**state, "next": 2})
    assert same.state_dict() == {**state, "next": 2}
    same.load_state_dict({"next": 1})  # an older checkpoint without the angles
    other = RotatedMNIST(root=rotated.root, num_experiences=3, rotations=[0, 90, 38], download=False)
    with pytest.raises(ValueError, match=r"another stream: its `rotations` are \[0.0, 90.0, 37.0\]"):
        other.load_state_dict(state)
    # the whole state is primitives: it survives the checkpoint's weights_only load
    torch.save(state, rotated.root / "state.pt")
    assert torch.load(rotated.root / "state.pt", weights_only=True) == state


@pytest.mark.data
@pytest.mark.parametrize("k", [0, 1, 2])
def test_batches_are_the_rotated_normalised_images(rotated: RotatedMNIST, k: int) -> None:
    dataset = rotated.train_stream[k].dataset
    index = [3, 59999, 12345, 7]
    x, y, t = dataset.__getitems__(index).tensors  # type: ignore[attr-defined]
    raw = dataset.inputs[index].float()  # type: ignore[attr-defined]
    expected = (reference(raw, rotated.rotations[k]) / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-4)
    assert torch.equal(t, torch.full((4,), k))
    for row, i in enumerate(index):
        xi, yi, ti = dataset[i]
        torch.testing.assert_close(xi, x[row], rtol=0, atol=0)
        assert (int(yi), int(ti)) == (int(y[row]), k)


@pytest.mark.data
def test_right_angle_and_identity_on_digits(rotated: RotatedMNIST) -> None:
    index = list(range(0, 10000, 97))
    plain, _, _ = rotated.test_stream[0].dataset.__getitems__(index).tensors  # type: ignore[attr-defined]
    turned, _, _ = rotated.test_stream[1].dataset.__getitems__(index).tensors  # type: ignore[attr-defined]
    raw = rotated.test_stream[0].dataset.inputs[index]  # type: ignore[attr-defined]
    torch.testing.assert_close(plain, (raw.float() / 255 - MNIST_MEAN) / MNIST_STD, rtol=0, atol=1e-4)
    torch.testing.assert_close(turned, torch.rot90(plain, 1, dims=(-2, -1)), rtol=0, atol=1e-4)


@pytest.mark.data
def test_uncovered_corners_are_background(rotated: RotatedMNIST) -> None:
    x, _, _ = rotated.train_stream[2].dataset.__getitems__(list(range(64))).tensors  # type: ignore[attr-defined]
    corners = x[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    torch.testing.assert_close(corners, torch.full_like(corners, BACKGROUND))


@pytest.mark.data
def test_loader_with_worker_processes(rotated: RotatedMNIST) -> None:
    dataset = rotated.test_stream[2].dataset
    pickle.dumps(dataset)  # the experience transform pickles: workers can use it under spawn too
    loader = DataLoader(dataset, batch_size=256, num_workers=1, collate_fn=collate)
    x, y, t = next(iter(loader))
    expected = collate(dataset.__getitems__(list(range(256))))  # type: ignore[attr-defined]
    assert x.shape == (256, 1, 28, 28)
    torch.testing.assert_close(x, expected[0], rtol=0, atol=0)
    assert torch.equal(y, expected[1]) and torch.equal(t, expected[2])
