"""TextLogger: a plain-text log of every logged metric, as Avalanche's TextLogger writes."""

from __future__ import annotations

import math
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor


def _format(value: Any) -> str:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.4e}"
    return f"{value:.4f}"


class _TextWriter:
    """Appends blocks to one file; each write opens and closes it, so the file is always complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write(self, header: str, lines: list[str]) -> None:
        with self.path.open("a") as file:
            file.write(f"-- {header} --\n")
            file.writelines(f"\t{line}\n" for line in lines)
            file.write("\n")


class TextLogger(Logger):
    """Writes every logged metric to a plain-text file, one readable block per logging call.

    Like Avalanche's ``TextLogger``: the hyperparameters first, then, for each
    ``log_metrics`` call (Lightning makes one per logging step, e.g. each training epoch end
    and each ``trainer.test``), a header with the step and one ``name = value`` line per metric,
    sorted by name. It is a Lightning :class:`~lightning.pytorch.loggers.Logger`, so it composes
    with the others: ``Trainer(logger=[CSVLogger(...), TextLogger(...)])``. Only rank 0 writes.

    The file is ``<save_dir>/<name>/version_<n>/log.txt`` (the next free version unless
    ``version`` is given), and each block is appended as soon as it is logged, so the file can
    be followed (``tail -f``) during training. :class:`~lightning_cl.loggers.StreamReport` also
    writes the accuracy matrix and the stream metrics into it after each stream evaluation.

    Args:
        save_dir: the root folder of the logs.
        name: the experiment's folder under ``save_dir``.
        version: the run's folder under ``name``: an int gives ``version_<n>``, a string is used
            as is; None takes the next free ``version_<n>``.

    Raises:
        TypeError: if ``save_dir``, ``name`` or ``version`` has the wrong type.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     logger = TextLogger(root, version=0)
        ...     logger.log_hyperparams({"lr": 0.1})
        ...     logger.log_metrics({"test/acc_exp0": 0.875, "stream/average_accuracy": 0.5}, step=6)
        ...     text = open(logger.log_file).read()
        >>> print(text.expandtabs(4).strip())
        -- hyperparameters --
            lr = 0.1
        <BLANKLINE>
        -- step 6 --
            stream/average_accuracy = 0.5000
            test/acc_exp0 = 0.8750
    """

    FILE_NAME = "log.txt"

    def __init__(self, save_dir: str | Path, name: str = "text", version: int | str | None = None) -> None:
        super().__init__()
        if not isinstance(save_dir, (str, os.PathLike)):
            raise TypeError(f"`save_dir`: expected a str or Path, got {type(save_dir).__name__}.")
        if not isinstance(name, str):
            raise TypeError(f"`name`: expected a str, got {type(name).__name__}.")
        if version is not None and (isinstance(version, bool) or not isinstance(version, (int, str))):
            raise TypeError(f"`version`: expected an int, a str or None, got {type(version).__name__}.")
        self._save_dir = os.fspath(save_dir)
        self._name = name
        self._version = version
        self._experiment: _TextWriter | None = None
        self._hparams: dict[str, Any] | None = None
        self._calls = 0

    @property
    def name(self) -> str:
        """The experiment's folder under ``save_dir``."""
        return self._name

    @property
    def version(self) -> int | str:
        """The run's version (the next free one unless given)."""
        if self._version is None:
            self._version = self._next_version()
        return self._version

    @property
    def save_dir(self) -> str:
        """The root folder of the logs."""
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``: the folder of every version of this experiment."""
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_<n>``: this run's folder."""
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)

    @property
    def log_file(self) -> str:
        """The path of the text log."""
        return os.path.join(self.log_dir, self.FILE_NAME)

    def _next_version(self) -> int:
        root = Path(self.root_dir)
        if not root.is_dir():
            return 0
        versions = [
            int(d.name.split("_", 1)[1])
            for d in root.iterdir()
            if d.is_dir() and d.name.startswith("version_") and d.name.split("_", 1)[1].isdigit()
        ]
        return max(versions) + 1 if versions else 0

    @property
    @rank_zero_experiment
    def experiment(self) -> _TextWriter:
        """The writer of the text file (a no-op object on ranks other than 0)."""
        if self._experiment is None:
            self._experiment = _TextWriter(Path(self.log_file))
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Write the hyperparameters, flattened, one per line (again only when they change).

        Lightning logs them at the start of every ``fit``; a stream has one ``fit`` per
        experience, so unchanged hyperparameters are written once.
        """
        flat = _flatten_dict(_convert_params(params))
        if flat == self._hparams:
            return
        self._hparams = dict(flat)
        # written as given, not rounded like metrics: a setting must read back exactly
        self.experiment.write("hyperparameters", [f"{key} = {flat[key]}" for key in sorted(flat)])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float | Tensor], step: int | None = None) -> None:
        """Write one block: the step, then ``name = value`` for every metric."""
        if step is None:
            step = self._calls
        self._calls += 1
        self.experiment.write(f"step {step}", [f"{key} = {_format(metrics[key])}" for key in sorted(metrics)])

    @rank_zero_only
    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        """Write a titled block of free text (e.g. a table), each line indented."""
        header = key if step is None else f"{key} (step {step})"
        self.experiment.write(header, text.splitlines())

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Note a run that did not end well (Lightning finalizes after every ``fit`` and ``test``)."""
        if self._experiment is not None and status != "success":
            self._experiment.write(f"run ended: {status}", [])
