"""RotatedMNIST: MNIST under a new rotation in every experience (domain-incremental)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_cl.benchmarks.domain_incremental import split_by_domain
from lightning_cl.benchmarks.mnist import MNIST_MEAN, MNIST_STD, download_mnist, load_mnist
from lightning_cl.benchmarks.split import check_transform, with_transforms
from lightning_cl.benchmarks.transforms import Compose, Normalize, Rotate
from lightning_cl.core.data import InMemoryDataset
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience


def draw_rotations(num_experiences: int, seed: int) -> list[float]:
    """``num_experiences`` angles in degrees, uniform in [0, 180), a pure function of ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(num_experiences, generator=generator, dtype=torch.float64) * 180).tolist()


class RotatedMNIST(StreamDataModule):
    """Domain-incremental MNIST: every experience is all of MNIST rotated by its own angle.

    Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
    (the rotated-MNIST stream); the arguments follow Avalanche's ``RotatedMNIST``.

    The angles are drawn with ``seed``, uniform in [0, 180) degrees (every experience is rotated,
    the first included), unless ``rotations`` gives them. Positive angles turn the digits
    counter-clockwise, as ``torchvision.transforms.functional.rotate`` does. The rotation is
    applied to whole batches of the uint8 images (bilinear, one ``grid_sample`` call per batch)
    before the usual normalisation, so the corners uncovered by the rotation are black, like the
    MNIST background (``-0.1307 / 0.3081`` once normalised). ``experience.dataset[i]`` is row
    ``i`` of a batch. All experiences hold the 10 digit classes; inputs are ``[1, 28, 28]``.

    Args:
        root: folder holding (or receiving) ``MNIST/raw``.
        num_experiences: number of rotations (10 by default).
        seed: seed of the angles (when ``rotations`` is None).
        rotations: the angle of each experience in degrees, ``num_experiences`` of them.
        task_labels: add the experience index as a task label.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        train_transform: applied to the train stream's inputs after the normalisation, on whole
            batches ``[B, C, H, W]`` of floats (wrap a per-image transform in ``PerSample``).
        eval_transform: the same for the test stream (None: normalisation only).
        download: download the files in ``prepare_data`` (rank 0 only), checking their md5.

    Raises:
        FileNotFoundError: from ``prepare_data`` when the files cannot be fetched, or when the
            streams are built without the files; the message names the folder and the files.

    Example:
        >>> RotatedMNIST(num_experiences=2, rotations=[0, 90], download=False).rotations
        [0.0, 90.0]
        >>> [round(angle) for angle in RotatedMNIST(num_experiences=3, seed=0, download=False).rotations]
        [175, 127, 83]
    """

    def __init__(
        self,
        root: str | Path = "data",
        num_experiences: int = 10,
        seed: int = 0,
        rotations: Sequence[float] | None = None,
        task_labels: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        train_transform: Callable[[Any], Any] | None = None,
        eval_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        if isinstance(num_experiences, bool) or not isinstance(num_experiences, int) or num_experiences < 1:
            raise ValueError(f"`num_experiences`: expected a positive integer, got {num_experiences!r}.")
        self.rotations = (
            draw_rotations(num_experiences, seed) if rotations is None else _check_rotations(rotations, num_experiences)
        )
        self.train_transform = check_transform(train_transform, "train_transform")
        self.eval_transform = check_transform(eval_transform, "eval_transform")
        # transforms are code, not hyperparameters: kept out so checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        self.task_labels = task_labels
        self.download = download
        self._num_experiences = num_experiences

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def num_experiences(self) -> int:
        return self._num_experiences

    def prepare_data(self) -> None:
        if self.download:
            download_mnist(self.root)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rotations": list(self.rotations)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # every experience holds the same classes, so the angles are what tells two streams apart
        rotations = state_dict.get("rotations")
        if rotations is not None and [float(a) for a in rotations] != self.rotations:
            raise ValueError(
                f"The checkpoint is from another stream: its `rotations` are {list(rotations)}, "
                f"this RotatedMNIST has {self.rotations}."
            )
        super().load_state_dict(state_dict)

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        train, test = load_mnist(self.root, train=True), load_mnist(self.root, train=False)
        # rotate the raw pixels, then normalise: zeros padding is then the black background
        normalize = Normalize([MNIST_MEAN], [MNIST_STD], scale=1 / 255)
        streams = split_by_domain(
            InMemoryDataset(train.inputs, train.targets),
            InMemoryDataset(test.inputs, test.targets),
            [Compose([Rotate(angle), normalize]) for angle in self.rotations],
            task_labels=self.task_labels,
        )
        return with_transforms(*streams, self.train_transform, self.eval_transform)


def _check_rotations(rotations: Sequence[float], num_experiences: int) -> list[float]:
    if isinstance(rotations, (str, bytes)) or not isinstance(rotations, Sequence):
        raise TypeError(f"`rotations`: expected a sequence of angles in degrees, got {type(rotations).__name__}.")
    if len(rotations) != num_experiences:
        raise ValueError(
            f"`rotations`: expected {num_experiences} angles (one per experience, `num_experiences`), "
            f"got {len(rotations)}."
        )
    for k, angle in enumerate(rotations):
        if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
            raise TypeError(f"`rotations[{k}]`: expected a number of degrees, got {type(angle).__name__}.")
        if not math.isfinite(angle):
            raise ValueError(f"`rotations[{k}]`: expected a finite number of degrees, got {angle}.")
    return [float(angle) for angle in rotations]
