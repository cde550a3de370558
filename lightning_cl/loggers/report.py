"""StreamReport: the accuracy matrix as pictures and tables in every logger, run artefacts, a summary."""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import numbers
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
import torchvision
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import Logger
from torch import Tensor

from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.module import ContinualModule
from lightning_cl.core.result import StreamResult
from lightning_cl.loggers.text import TextLogger
from lightning_cl.metrics.callback import ContinualMetrics
from lightning_cl.viz import accuracy_curves_image, accuracy_matrix_image, encode_png

MATRIX_KEY = "stream/accuracy_matrix"
CURVES_KEY = "stream/accuracy_curves"
TABLE_KEY = "stream/accuracy_matrix_table"
_MATRIX_FIELDS = ("accuracy_matrix", "initial_accuracy", "fit_seconds")


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}`: expected a bool, got {type(value).__name__}.")
    return value


class StreamReport(L.Callback):
    """Reports the accuracy matrix of a stream: in every logger, as files, and in the terminal.

    Add it to the Trainer that runs the stream (with :func:`~lightning_cl.fit_stream` or the
    explicit ``fit``/``test`` loop)::

        trainer = L.Trainer(logger=[CSVLogger("logs"), TensorBoardLogger("logs")], callbacks=[StreamReport()])
        fit_stream(trainer, ContinualModule(model), datamodule)

    After each stream evaluation (``trainer.test`` after an experience; the initial evaluation
    of the untrained model only contributes the ``init`` row), at ``trainer.global_step``:

    * **loggers** (the scalars ``test/acc_exp{j}`` and ``stream/*`` are logged by
      :class:`~lightning_cl.ContinualModule` itself):

      - ``TensorBoardLogger``: images ``stream/accuracy_matrix`` (heatmap) and
        ``stream/accuracy_curves``, and a markdown table of R as text
        ``stream/accuracy_matrix_table``;
      - ``WandbLogger``: the same two images (``log_image``) and a ``wandb.Table`` of R
        (``log_table``) under ``stream/accuracy_matrix_table``;
      - ``CSVLogger``: ``accuracy_matrix.csv`` in its ``log_dir``;
      - :class:`~lightning_cl.loggers.TextLogger`: the table of R and the stream metrics;
      - other loggers receive the scalars only.

    * **artefacts**, overwritten after every evaluation, so that they describe the whole stream
      after the last one: ``accuracy_matrix.png``, ``accuracy_curves.png``,
      ``accuracy_matrix.csv`` and ``results.json`` in ``directory``, or else the first logger's
      folder (its ``log_dir``; for W&B the run's ``files`` folder, which is uploaded with the run).
      ``results.json`` holds every field of :class:`~lightning_cl.StreamResult` (``R``, the
      initial accuracies, the stream metrics, ``fit_seconds``; NaN as ``null``), the progress
      (``experiences_trained``, ``num_experiences``, ``finished``, ``global_step``), the seeds
      (the datamodule's ``seed``, the effective ``shuffle_seed`` and ``PL_GLOBAL_SEED``), the
      library versions and the configuration (the wrapped module's and the datamodule's
      hyperparameters, the per-experience budget, the callbacks' plain settings).

    * **terminal**: after the evaluation that follows the last experience, a summary table of R
      and of the stream metrics is printed (with ``rich`` when it is installed, else
      :meth:`StreamResult.table <lightning_cl.StreamResult.table>`), once the test progress bar
      has closed. For the experience in the progress bar, use
      :class:`~lightning_cl.loggers.StreamProgressBar`.

    Only rank 0 writes, logs and prints; nothing here is a collective, so ranks cannot hang on it.

    Args:
        directory: where the artefacts go; required when the Trainer has no logger.
        images: draw the heatmap and the curves (logged images and PNG files).
        tables: log the table of R and write ``accuracy_matrix.csv`` files.
        summary: print the summary at the end of the stream.

    Raises:
        TypeError: if an argument has the wrong type, or (at ``fit``/``test``) the model is not a
            :class:`~lightning_cl.ContinualModule`.
        ValueError: (at ``fit``/``test``) without ``directory`` when the Trainer has no logger or
            its first logger has no folder.

    Example:
        >>> import tempfile
        >>> report = StreamReport(directory=tempfile.gettempdir(), summary=False)
        >>> trainer = L.Trainer(logger=False, callbacks=[report], enable_progress_bar=False)
    """

    def __init__(
        self, directory: str | Path | None = None, images: bool = True, tables: bool = True, summary: bool = True
    ) -> None:
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"`directory`: expected a str, a Path or None, got {type(directory).__name__}.")
        self.directory = None if directory is None else Path(directory)
        self.images = _check_flag(images, "images")
        self.tables = _check_flag(tables, "tables")
        self.summary = _check_flag(summary, "summary")
        self._summary_due: StreamResult | None = None

    # --------------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "test"):
            return
        if not isinstance(pl_module, ContinualModule):
            raise TypeError(
                f"StreamReport reports a stream: expected the model to be a lightning_cl.ContinualModule, "
                f"got {type(pl_module).__name__}."
            )
        if self.directory is None:
            if not trainer.loggers:
                raise ValueError(
                    "StreamReport: `directory` is required when the Trainer has no logger "
                    "(logger=False): the artefacts need a folder. Pass StreamReport(directory=...)."
                )
            first = trainer.loggers[0]
            if not isinstance(first, WandbLogger) and _logger_folder(first) is None:
                raise ValueError(
                    f"StreamReport: the first logger, {type(first).__name__}, has no local folder "
                    "(log_dir / save_dir is None). Pass StreamReport(directory=...)."
                )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ContinualModule) or not trainer.is_global_zero:
            return
        dm = pl_module.datamodule
        trained = dm.completed_experiences
        R = pl_module.accuracy_matrix
        if trained == 0 or R.shape[0] < trained or torch.isnan(R[trained - 1]).all():
            return  # the initial evaluation: no row of R yet
        result = pl_module.stream_result
        step = trainer.global_step
        pictures: dict[str, Tensor] = {}
        if self.images:
            pictures[MATRIX_KEY] = accuracy_matrix_image(result.accuracy_matrix, result.initial_accuracy)
            pictures[CURVES_KEY] = accuracy_curves_image(result.accuracy_matrix, result.initial_accuracy)
        csv_folders = []
        for logger in trainer.loggers:
            self._log(logger, result, pictures, step)
            if self.tables and isinstance(logger, CSVLogger):
                csv_folders.append(Path(logger.log_dir))
        folder = self._artefact_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        if self.tables:
            for target in dict.fromkeys([folder, *csv_folders]):
                target.mkdir(parents=True, exist_ok=True)
                _write_atomic(target / "accuracy_matrix.csv", _csv_table(result).encode())
        for key, picture in pictures.items():
            name = key.split("/", 1)[1] + ".png"
            _write_atomic(folder / name, encode_png(picture))
        finished = trained >= dm.num_experiences
        report = {
            "experiences_trained": trained,
            "num_experiences": dm.num_experiences,
            "finished": finished,
            "global_step": step,
            **result_to_dict(result),
            "seeds": _seeds(dm),
            "versions": _versions(),
            "config": _config(trainer, pl_module, dm),
        }
        selected = [c for c in trainer.callbacks if isinstance(c, ContinualMetrics)]  # type: ignore[attr-defined]
        if selected:
            # every evaluation's selected metrics (seen-classes accuracy, flips, confusion, ...)
            report["metrics"] = _json_safe(
                {"stream": selected[0].results, "experiences": selected[0].experience_results}
            )
        _write_atomic(folder / "results.json", (_dumps(report) + "\n").encode())
        if finished and self.summary:
            self._summary_due = result

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # printed here, after the test progress bar has closed, not in the middle of it
        if self._summary_due is not None:
            print_summary(self._summary_due)
            self._summary_due = None

    # ------------------------------------------------------------------------------- helpers
    def _artefact_folder(self, trainer: L.Trainer) -> Path:
        if self.directory is not None:
            return self.directory
        first = trainer.loggers[0]
        if isinstance(first, WandbLogger):
            return Path(first.experiment.dir)
        folder = _logger_folder(first)
        assert folder is not None  # for mypy: checked in setup
        return folder

    def _log(self, logger: Logger, result: StreamResult, pictures: dict[str, Tensor], step: int) -> None:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            for key, picture in pictures.items():
                writer.add_image(key, picture, global_step=step, dataformats="CHW")
            if self.tables:
                writer.add_text(TABLE_KEY, _markdown_table(result), global_step=step)
        elif isinstance(logger, WandbLogger):
            for key, picture in pictures.items():
                logger.log_image(key=key, images=[picture.permute(1, 2, 0).numpy()], step=step)
            if self.tables:
                columns, data = _table_rows(result)
                logger.log_table(key=TABLE_KEY, columns=columns, data=data, step=step)
        elif isinstance(logger, TextLogger) and self.tables:
            logger.log_text(TABLE_KEY, result.table(), step=step)


def _logger_folder(logger: Logger) -> Path | None:
    for name in ("log_dir", "save_dir"):
        value = getattr(logger, name, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    # a reader (or a crash) never sees a half-written file, though it is rewritten every experience
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# ----------------------------------------------------------------------------------- tables
def _matrix_rows(result: StreamResult) -> list[tuple[str, list[float]]]:
    rows = []
    if result.initial_accuracy is not None:
        rows.append(("initial", [float(v) for v in result.initial_accuracy.tolist()]))
    rows.extend((str(i), [float(v) for v in row]) for i, row in enumerate(result.accuracy_matrix.tolist()))
    return rows


def _table_rows(result: StreamResult) -> tuple[list[str], list[list[Any]]]:
    columns = ["after experience"] + [f"exp {j}" for j in range(result.accuracy_matrix.shape[1])]
    data: list[list[Any]] = [
        [label] + [None if math.isnan(v) else v for v in values] for label, values in _matrix_rows(result)
    ]
    return columns, data


def _csv_table(result: StreamResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["after_experience"] + [f"exp_{j}" for j in range(result.accuracy_matrix.shape[1])])
    for label, values in _matrix_rows(result):
        writer.writerow([label] + ["" if math.isnan(v) else repr(v) for v in values])
    return buffer.getvalue()


def _markdown_table(result: StreamResult) -> str:
    columns, data = _table_rows(result)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in data:
        cells = [row[0]] + ["" if v is None else f"{v:.4f}" for v in row[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in stream_metrics(result).items()]
    return "\n".join(lines)


def stream_metrics(result: StreamResult) -> dict[str, float]:
    """The scalar stream metrics of ``result`` by name (every float field; None ones left out).

    Example:
        >>> R = torch.tensor([[0.9, 0.1], [0.6, 0.8]])
        >>> result = StreamResult(R, 0.7, 0.3, -0.3, None, None, [1.0, 1.0])
        >>> stream_metrics(result)
        {'average_accuracy': 0.7, 'forgetting': 0.3, 'backward_transfer': -0.3}
    """
    metrics = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if field.name not in _MATRIX_FIELDS and isinstance(value, numbers.Real) and not isinstance(value, bool):
            metrics[field.name] = float(value)
    return metrics


def print_summary(result: StreamResult) -> None:
    """Print R and the stream metrics: as ``rich`` tables when ``rich`` is installed, else as text."""
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        print(result.table())
        return
    columns = result.accuracy_matrix.shape[1]
    # "[i, j]" would read as rich markup
    matrix = Table(title=escape("Accuracy matrix R[i, j]"), caption="rows: trained; columns: tested")
    matrix.add_column("after exp", no_wrap=True)
    for j in range(columns):
        matrix.add_column(f"exp {j}", justify="right", no_wrap=True)
    matrix.add_column("fit s", justify="right", no_wrap=True)
    for label, values in _matrix_rows(result):
        cells = ["-" if math.isnan(v) else f"{v:.4f}" for v in values]
        seconds = ""
        if label != "initial":
            i = int(label)
            if i < columns:
                cells[i] = f"[bold]{cells[i]}[/bold]"  # R[i, i]: the experience just trained
            if i < len(result.fit_seconds):
                seconds = f"{result.fit_seconds[i]:.2f}"
        matrix.add_row(label, *cells, seconds)
    metrics = Table(title="Stream metrics")
    metrics.add_column("metric", no_wrap=True)
    metrics.add_column("value", justify="right", no_wrap=True)
    for name, value in stream_metrics(result).items():
        metrics.add_row(name.replace("_", " "), f"{value:+.4f}" if "transfer" in name else f"{value:.4f}")
    console = Console()
    needed = 12 + 10 * (columns + 1)
    if not console.is_terminal and console.width < needed:
        console = Console(width=needed)  # redirected output: do not wrap the numbers of a wide matrix
    console.print(matrix)
    console.print(metrics)


# --------------------------------------------------------------------------------- results.json
def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Tensor):
        if value.numel() > 100_000:
            return f"<tensor {list(value.shape)}>"
        return _json_safe(value.detach().cpu().tolist())
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return _json_safe(value.value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    text = repr(value)
    if len(text) <= 200 and "\n" not in text:
        return text
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _dumps(value: Any, level: int = 0) -> str:
    """JSON with two-space indentation, except that a list of numbers (a row of R) stays on one line."""
    inner, outer = "  " * (level + 1), "  " * level
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_dumps(item, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + outer + "}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        items = [inner + _dumps(item, level + 1) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + outer + "]"
    return json.dumps(value, allow_nan=False)


def result_to_dict(result: StreamResult) -> dict[str, Any]:
    """Every field of ``result`` as JSON-safe values: tensors as (nested) lists, NaN as None.

    Example:
        >>> R = torch.tensor([[0.5, float("nan")], [0.25, 0.75]])
        >>> result_to_dict(StreamResult(R, 0.5, 0.25, -0.25, None, None, [1.5, 2.0]))["accuracy_matrix"]
        [[0.5, None], [0.25, 0.75]]
    """
    return {field.name: _json_safe(getattr(result, field.name)) for field in dataclasses.fields(result)}


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _seeds(dm: StreamDataModule) -> dict[str, Any]:
    global_seed = os.environ.get("PL_GLOBAL_SEED")
    return {
        "seed": _json_safe(dm.seed),
        "shuffle_seed": dm._sampler_seed(),
        "pl_global_seed": int(global_seed) if global_seed is not None and global_seed.lstrip("-").isdigit() else None,
    }


def _versions() -> dict[str, str]:
    from lightning_cl import __version__  # here: lightning_cl/__init__ may import this module

    return {
        "lightning_cl": __version__,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "torchmetrics": torchmetrics.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _plain_settings(obj: Any) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(obj).items()
        if not name.startswith("_") and (value is None or isinstance(value, (bool, int, float, str)))
    }


def _config(trainer: L.Trainer, pl_module: ContinualModule, dm: StreamDataModule) -> dict[str, Any]:
    module = pl_module.module
    return _json_safe(
        {
            "module": {"class": _qualname(module), "hparams": dict(module.hparams)},
            "continual_module": {
                "log_loss_on_step": pl_module.log_loss_on_step,
                "keep_optimizer_state": pl_module.keep_optimizer_state,
            },
            "datamodule": {
                "class": _qualname(dm),
                "hparams": dict(dm.hparams),
                "num_experiences": dm.num_experiences,
                "num_classes": dm.num_classes,
                "batch_size": dm.batch_size,
                "eval_batch_size": dm.eval_batch_size,
                "num_workers": dm.num_workers,
            },
            "trainer": {
                # the user's Trainer limits, i.e. the budget of one experience
                "max_epochs_per_experience": dm._epochs_per_experience,
                "max_steps_per_experience": dm._steps_per_experience,
                "precision": trainer.precision,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "accelerator": type(trainer.accelerator).__name__,
                "strategy": type(trainer.strategy).__name__,
                "world_size": trainer.world_size,
            },
            "callbacks": [{"class": _qualname(c), **_plain_settings(c)} for c in trainer.callbacks],  # type: ignore[attr-defined]
        }
    )
