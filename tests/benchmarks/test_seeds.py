"""Reproducibility: the stream seed fixes the stream, and the datamodule records both seeds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_cl.benchmarks.cifar import SplitCIFAR10
from lightning_cl.benchmarks.mnist import PermutedMNIST, SplitMNIST, download_mnist
from lightning_cl.benchmarks.rotated_mnist import RotatedMNIST
from tests.benchmarks.test_cifar import fake_cifar, root  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def mnist(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the staged archives, extracted (torchvision checks the md5, no download)."""
    path = tmp_path_factory.mktemp("mnist_seeds")
    shutil.copytree(mnist_root / "MNIST" / "raw", path / "MNIST" / "raw")
    download_mnist(path)
    return path


def _fingerprint(dm: Any) -> list[Any]:
    """What a seed decides: classes per experience and the first inputs of each experience."""
    out: list[Any] = []
    for experience in dm.train_stream:
        batch = experience.dataset.__getitems__([0, 1, 2]).tensors
        out.append((experience.classes_in_this_experience, batch[0], batch[1]))
    return out


def _same(a: list[Any], b: list[Any]) -> bool:
    return all(x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))


MNIST_MAKERS = {
    "split": lambda path, seed: SplitMNIST(path, num_experiences=5, seed=seed, download=False),
    "permuted": lambda path, seed: PermutedMNIST(path, num_experiences=3, seed=seed, download=False),
    "rotated": lambda path, seed: RotatedMNIST(path, num_experiences=3, seed=seed, download=False),
}


@pytest.mark.data
@pytest.mark.parametrize("name", list(MNIST_MAKERS))
def test_same_seed_same_stream_mnist(mnist: Path, name: str) -> None:
    make = MNIST_MAKERS[name]
    a, b, other = make(mnist, 7), make(mnist, 7), make(mnist, 8)
    assert _same(_fingerprint(a), _fingerprint(b))
    assert not _same(_fingerprint(a), _fingerprint(other))
    assert a.hparams["seed"] == 7


@pytest.mark.data
def test_same_seed_same_permutations_and_rotations(mnist: Path) -> None:
    p1, p2 = PermutedMNIST(mnist, seed=3, download=False), PermutedMNIST(mnist, seed=3, download=False)
    assert all(torch.equal(x, y) for x, y in zip(p1.permutations(), p2.permutations()))
    r1, r2 = RotatedMNIST(mnist, seed=3, download=False), RotatedMNIST(mnist, seed=3, download=False)
    assert r1.rotations == r2.rotations


def test_same_seed_same_class_order_cifar(root: Path) -> None:  # noqa: F811
    orders = [
        [e.classes_in_this_experience for e in SplitCIFAR10(root, seed=s, download=False).train_stream]
        for s in (5, 5, 6)
    ]
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


@pytest.mark.parametrize(("shuffle_seed", "global_seed", "expected"), [(11, "3", 11), (None, "3", 3), (None, None, 0)])
def test_state_dict_holds_both_seeds(
    root: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    shuffle_seed: int | None,
    global_seed: str | None,
    expected: int,
) -> None:
    if global_seed is None:
        monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    else:
        monkeypatch.setenv("PL_GLOBAL_SEED", global_seed)
    dm = SplitCIFAR10(root, seed=5, download=False)
    dm.shuffle_seed = shuffle_seed
    state = dm.state_dict()
    assert state["seed"] == 5
    assert state["shuffle_seed"] == expected
    assert dm.hparams["seed"] == 5


def test_train_loader_logs_shuffle_seed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    dm = SplitCIFAR10(root, seed=5, download=False)
    dm.train_dataloader()
    assert dm.hparams["shuffle_seed"] == 4
