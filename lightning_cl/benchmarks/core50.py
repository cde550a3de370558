"""CORe50: the NI, NC and NIC continual object-recognition protocols over its 128x128 folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from lightning_cl.benchmarks.class_incremental import select
from lightning_cl.benchmarks.folders import IMAGENET_MEAN, IMAGENET_STD, Transform, _check_transform
from lightning_cl.benchmarks.image_folder import ImageFiles
from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.experience import Experience, Stream

CORE50_SESSIONS = tuple(range(1, 12))
CORE50_TEST_SESSIONS = (3, 7, 10)  # the standard protocol's test sessions (outdoor 3, 7 and 10)
CORE50_TRAIN_SESSIONS = tuple(s for s in CORE50_SESSIONS if s not in CORE50_TEST_SESSIONS)
SCENARIOS = ("ni", "nc", "nic")


class CORe50(StreamDataModule):
    """CORe50 (Lomonaco & Maltoni, 2017, "CORe50: a New Dataset and Benchmark for Continuous Object
    Recognition", CoRL): 50 objects of 10 categories filmed in 11 sessions.

    Reads a local copy of the 128x128 layout ``root/core50_128x128/s{1..11}/o{1..50}/*.png``
    (``C_{session}_{object}_{frame}.png``); the 11 GB archive is never downloaded. Class ids are
    the object ids ``object - 1`` (0..49), or with ``object_level=False`` the category ids
    ``(object - 1) // 5`` (0..9, five consecutive objects per category). Sessions 3, 7 and 10 are
    the test set and the 8 others the training set, as in the standard protocol. Scenarios:

    * ``"ni"`` (new instances): 8 experiences, one per training session (in an order shuffled
      with ``seed``), each with every object; the test stream is one experience, the whole test set.
    * ``"nc"`` (new classes): the objects in an order shuffled with ``seed`` (or
      ``object_order``), the first 10 in experience 0, then 5 per experience (9 experiences for 50
      objects, the NC protocol's sizes), each with every training session of its objects; the
      test stream has one experience per train experience, the test images of its objects.
      With ``object_level=False`` the labels are categories, so one category may come back in
      several experiences.
    * ``"nic"`` (new instances and classes): a simplified, seeded stand-in for NICv2 (its official
      79/196/391-batch file lists are not available offline): the object groups of ``"nc"``
      crossed with the 8 training sessions, each ``(session, group)`` pair one experience (72 for
      50 objects); experience 0 is the first group in a seeded session, the others come in a
      seeded random order. The test stream is one experience, the whole test set.

    With ``task_labels`` experience ``k`` of the train stream has task label ``k`` and batches become
    ``(x, y, t)``; in ``"nc"`` test experience ``k`` has task label ``k`` too, and in ``"ni"`` /
    ``"nic"``, whose test stream is one test set, that test set is repeated once per train
    experience with its task label (as :func:`~lightning_cl.benchmarks.instance_incremental`
    does), so a multi-head model is evaluated with every head (a ``[T, T]`` accuracy matrix; note
    that ``"nic"`` then evaluates the test set 72 times).

    Images are read per sample; the default transform (train and test) is ``ToTensor`` and the
    ImageNet mean/std normalisation, giving ``[3, 128, 128]`` inputs.

    Args:
        root: folder holding ``core50_128x128``.
        scenario: ``"ni"``, ``"nc"`` or ``"nic"``.
        object_level: label objects (50 classes) or, when False, categories (10 classes).
        seed: seed of the session and object orders.
        object_order: the order of the objects for ``"nc"`` / ``"nic"`` (a permutation of
            ``1..num_objects``); by default shuffled with ``seed``.
        batch_size: training batch size.
        eval_batch_size: test batch size (defaults to ``batch_size``).
        num_workers: loader worker processes.
        num_objects: read only objects ``1..num_objects`` (a multiple of 5, at least 10; 50, the
            whole data set, by default), e.g. for a quick test.
        train_transform: replaces the default train transform.
        eval_transform: replaces the default test transform.
        task_labels: add the experience index as a task label (see above).

    Raises:
        ValueError: an unknown ``scenario``, a bad ``num_objects`` or ``object_order``.
        TypeError: a transform that is not callable, a ``root`` that is not a path, a
            ``task_labels`` that is not a bool.
        FileNotFoundError: at loading, a missing folder or a folder without PNG images, naming it,
            ``root`` and the layout.

    Example:
        >>> dm = CORe50("data", scenario="nc")  # nothing is read yet
        >>> dm.num_experiences, dm.num_classes
        (9, 50)
        >>> CORe50("data", scenario="nic", object_level=False).num_classes
        10
    """

    LAYOUT = "<root>/core50_128x128/s{1..11}/o{1..50}/C_<session>_<object>_<frame>.png"

    def __init__(
        self,
        root: str | Path,
        scenario: str = "nc",
        object_level: bool = True,
        seed: int = 0,
        object_order: Sequence[int] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_objects: int = 50,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        task_labels: bool = False,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root`: expected a path, got {type(root).__name__}.")
        if scenario not in SCENARIOS:
            raise ValueError(f"`scenario`: expected one of {list(SCENARIOS)}, got {scenario!r}.")
        if (
            isinstance(num_objects, bool)
            or not isinstance(num_objects, int)
            or not 10 <= num_objects <= 50
            or num_objects % 5
        ):
            raise ValueError(f"`num_objects`: expected a multiple of 5 in 10..50, got {num_objects!r}.")
        if object_order is not None:
            if isinstance(object_order, (str, bytes)) or not isinstance(object_order, Sequence):
                raise TypeError(
                    f"`object_order`: expected a sequence of object ids, got {type(object_order).__name__}."
                )
            if sorted(object_order) != list(range(1, num_objects + 1)):
                raise ValueError(
                    f"`object_order`: expected a permutation of the object ids 1..{num_objects}, "
                    f"got {list(object_order)}."
                )
        _check_transform(train_transform, "train_transform")
        _check_transform(eval_transform, "eval_transform")
        if not isinstance(task_labels, bool):
            raise TypeError(f"`task_labels`: expected a bool, got {type(task_labels).__name__}.")
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.root = Path(root)
        self.scenario = scenario
        self.object_level = object_level
        self.object_order = None if object_order is None else [int(o) for o in object_order]
        self.num_objects = num_objects
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.task_labels = task_labels

    @property
    def num_classes(self) -> int:
        return self.num_objects if self.object_level else self.num_objects // 5

    @property
    def num_experiences(self) -> int:
        groups = 1 + (self.num_objects - 10) // 5
        return {"ni": len(CORE50_TRAIN_SESSIONS), "nc": groups, "nic": groups * len(CORE50_TRAIN_SESSIONS)}[
            self.scenario
        ]

    def default_transform(self, train: bool) -> Transform:
        return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def class_of(self, obj: int) -> int:
        """The class id of object ``obj`` (1-based)."""
        return obj - 1 if self.object_level else (obj - 1) // 5

    def _scan(self) -> tuple[list[str], list[int], list[int]]:
        """Paths, sessions and objects of every image of objects ``1..num_objects``."""
        folder = self.root / "core50_128x128"
        paths: list[str] = []
        sessions: list[int] = []
        objects: list[int] = []
        for session in CORE50_SESSIONS:
            for obj in range(1, self.num_objects + 1):
                path = folder / f"s{session}" / f"o{obj}"
                names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png")) if path.is_dir() else []
                if not names:
                    raise FileNotFoundError(
                        f"CORe50: no PNG image in {str(path)!r} (root {str(self.root)!r}); expected the layout "
                        f"{self.LAYOUT}. The 128x128 archive (core50_128x128.zip) is never downloaded: extract it "
                        "under root."
                    )
                paths += [str(path / n) for n in names]
                sessions += [session] * len(names)
                objects += [obj] * len(names)
        return paths, sessions, objects

    def _groups(self, generator: torch.Generator) -> list[list[int]]:
        order = self.object_order
        if order is None:
            order = (torch.randperm(self.num_objects, generator=generator) + 1).tolist()
        return [order[:10]] + [order[k : k + 5] for k in range(10, self.num_objects, 5)]

    def build_streams(self) -> tuple[Sequence[Experience], Sequence[Experience]]:
        paths, sessions_list, objects_list = self._scan()
        sessions, objects = torch.tensor(sessions_list), torch.tensor(objects_list)
        targets = torch.tensor([self.class_of(o) for o in objects_list])
        train_t = self.train_transform or self.default_transform(True)
        eval_t = self.eval_transform or self.default_transform(False)
        files = list(zip(paths, targets.tolist(), strict=True))
        train_data, test_data = ImageFiles(files, train_t), ImageFiles(files, eval_t)
        is_test = torch.isin(sessions, torch.tensor(CORE50_TEST_SESSIONS))
        generator = torch.Generator().manual_seed(self.seed)

        def experience(k: int, dataset: Dataset, mask: torch.Tensor) -> Experience:
            index = mask.nonzero().squeeze(1)
            tasks = torch.full((len(index),), k, dtype=torch.long) if self.task_labels else None
            classes = tuple(sorted(set(targets[index].tolist())))
            return Experience(k, select(dataset, index, targets[index], tasks), classes, k if self.task_labels else 0)

        train: list[Experience] = []
        test: list[Experience] = []
        session_order = [CORE50_TRAIN_SESSIONS[i] for i in torch.randperm(8, generator=generator).tolist()]
        if self.scenario == "ni":
            train = [experience(k, train_data, sessions == s) for k, s in enumerate(session_order)]
        else:
            groups = self._groups(generator)
            if self.scenario == "nc":
                for k, group in enumerate(groups):
                    in_group = torch.isin(objects, torch.tensor(group))
                    train.append(experience(k, train_data, in_group & ~is_test))
                    test.append(experience(k, test_data, in_group & is_test))
            else:
                pairs = [(s, g) for g in range(len(groups)) for s in session_order]
                rest = pairs[1:]
                pairs = pairs[:1] + [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
                for k, (s, g) in enumerate(pairs):
                    train.append(
                        experience(k, train_data, (sessions == s) & torch.isin(objects, torch.tensor(groups[g])))
                    )
        if not test:
            # one test set; with task labels it is repeated once per task, as a multi-head model needs
            test = [experience(k, test_data, is_test) for k in range(len(train) if self.task_labels else 1)]
        return Stream(train, "train"), Stream(test, "test")
