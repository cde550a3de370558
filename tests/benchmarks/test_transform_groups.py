"""train_transform / eval_transform of the in-memory benchmarks, batched and per sample (PerSample)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_cl.benchmarks.cifar import SplitCIFAR10, SplitCIFAR110
from lightning_cl.benchmarks.fmnist import SplitFMNIST
from lightning_cl.benchmarks.mnist import PermutedMNIST, SplitMNIST, download_mnist
from lightning_cl.benchmarks.rotated_mnist import RotatedMNIST
from lightning_cl.benchmarks.transforms import PerSample
from lightning_cl.core.data import StackedBatch
from tests.benchmarks.test_cifar import fake_cifar, root  # noqa: F401  (fixtures)

INDICES = [0, 3, 7, 11]


def affine(x: Tensor) -> Tensor:
    """A deterministic batched transform."""
    return x * 2.0 + 1.0


def flip_one(img: Tensor) -> Tensor:
    """A deterministic transform of one image [C, H, W] that asserts it gets one."""
    assert img.dim() == 3, f"PerSample must hand one image, got shape {tuple(img.shape)}"
    return img.flip(-1)


def _batch(dataset: Any, indices: list[int]) -> Tensor:
    batch = dataset.__getitems__(indices)
    assert isinstance(batch, StackedBatch)
    return batch.tensors[0]


def _check(plain: Any, transformed: Any) -> None:
    for stream, expected in (("train_stream", affine), ("test_stream", lambda b: b.flip(-1))):
        for base, exp in zip(getattr(plain, stream), getattr(transformed, stream)):
            indices = [i for i in INDICES if i < len(exp.dataset)]
            batch = _batch(exp.dataset, indices)
            assert batch.dtype == torch.float32
            torch.testing.assert_close(batch, expected(_batch(base.dataset, indices)))
            for row, i in enumerate(indices):
                torch.testing.assert_close(exp.dataset[i][0], batch[row])
            assert exp.classes_in_this_experience == base.classes_in_this_experience
            assert torch.equal(exp.dataset.targets, base.dataset.targets)


@pytest.fixture(scope="module")
def mnist(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the staged archives, extracted (torchvision checks the md5, no download)."""
    path = tmp_path_factory.mktemp("mnist_transforms")
    shutil.copytree(mnist_root / "MNIST" / "raw", path / "MNIST" / "raw")
    download_mnist(path)
    return path


MNIST_MAKERS = [
    lambda path, **kw: SplitMNIST(path, num_experiences=5, download=False, **kw),
    lambda path, **kw: PermutedMNIST(path, num_experiences=2, download=False, **kw),
    lambda path, **kw: RotatedMNIST(path, num_experiences=2, download=False, **kw),
]


@pytest.mark.data
@pytest.mark.parametrize("make", MNIST_MAKERS, ids=["split", "permuted", "rotated"])
def test_mnist_transforms_batched_and_per_sample(mnist: Path, make: Any) -> None:
    plain = make(mnist)
    transformed = make(mnist, train_transform=affine, eval_transform=PerSample(flip_one))
    _check(plain, transformed)


@pytest.mark.parametrize("make", [SplitCIFAR10, SplitCIFAR110], ids=["cifar10", "cifar110"])
def test_cifar_transforms_batched_and_per_sample(root: Path, make: Any) -> None:  # noqa: F811
    num = 5 if make is SplitCIFAR10 else 2
    plain = make(root, num_experiences=num, download=False)
    transformed = make(
        root, num_experiences=num, download=False, train_transform=affine, eval_transform=PerSample(flip_one)
    )
    _check(plain, transformed)


def test_per_sample_applies_to_each_row() -> None:
    x = torch.arange(12.0).view(3, 1, 2, 2)
    out = PerSample(flip_one)(x)
    assert torch.equal(out, x.flip(-1))


def test_per_sample_same_rng_state_same_rows() -> None:
    noisy = PerSample(lambda img: img + torch.rand(img.shape))
    x = torch.zeros(2, 1, 2, 2)
    torch.manual_seed(0)
    a = noisy(x)
    torch.manual_seed(0)
    b = noisy(x)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_bad_transforms() -> None:
    with pytest.raises(TypeError, match="`transform`: expected a callable, got int"):
        PerSample(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`train_transform`: expected a callable"):
        SplitFMNIST("nowhere", train_transform=3, download=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`eval_transform`: expected a callable"):
        PermutedMNIST("nowhere", eval_transform="flip", download=False)  # type: ignore[arg-type]


def test_transforms_are_not_hyperparameters(root: Path) -> None:  # noqa: F811
    dm = SplitCIFAR10(root, download=False, train_transform=affine, eval_transform=PerSample(flip_one))
    assert "train_transform" not in dm.hparams
    assert "eval_transform" not in dm.hparams
    assert dm.train_transform is affine
