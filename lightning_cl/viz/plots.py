"""Pictures of a stream's results, drawn into ``uint8`` tensors (no plotting library needed).

Both functions return an RGB image ``[3, H, W]`` of ``torch.uint8``, ready for
``torchvision.io.write_png``, ``SummaryWriter.add_image`` or ``wandb.Image``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from lightning_cl.viz._canvas import BLACK, GREY, LIGHT_GREY, WHITE, Canvas, colormap, is_dark, palette, text_width

_PAD = 12


def _check(accuracy_matrix: Tensor, initial_accuracy: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(accuracy_matrix, Tensor):
        raise TypeError(f"`accuracy_matrix`: expected a torch.Tensor, got {type(accuracy_matrix).__name__}.")
    if accuracy_matrix.dim() != 2 or accuracy_matrix.numel() == 0:
        raise ValueError(
            "`accuracy_matrix`: expected a non-empty 2-D tensor [trained experiences, test experiences], "
            f"got shape {tuple(accuracy_matrix.shape)}."
        )
    R = accuracy_matrix.detach().double().cpu()
    initial = None
    if initial_accuracy is not None:
        if not isinstance(initial_accuracy, Tensor):
            raise TypeError(
                f"`initial_accuracy`: expected a torch.Tensor or None, got {type(initial_accuracy).__name__}."
            )
        if initial_accuracy.dim() != 1 or len(initial_accuracy) != R.shape[1]:
            raise ValueError(
                f"`initial_accuracy`: expected a 1-D tensor of {R.shape[1]} accuracies (one per test "
                f"experience), got shape {tuple(initial_accuracy.shape)}."
            )
        initial = initial_accuracy.detach().double().cpu()
    for name, values in (("accuracy_matrix", R), ("initial_accuracy", initial)):
        if values is None:
            continue
        finite = values[~values.isnan()]
        if finite.numel() and (finite.min() < 0 or finite.max() > 1):
            raise ValueError(
                f"`{name}`: expected accuracies in [0, 1] (NaN for a missing value), got values from "
                f"{float(finite.min()):.4g} to {float(finite.max()):.4g}."
            )
    return R, initial


def _label_step(labels: list[str], scale: int, room: int) -> int:
    """Label every k-th tick so that neighbouring labels do not overlap."""
    widest = max(text_width(label, scale) for label in labels) + 4
    return max(1, math.ceil(widest / max(room, 1)))


def accuracy_matrix_image(
    accuracy_matrix: Tensor, initial_accuracy: Tensor | None = None, *, title: str = "Accuracy matrix R[i, j]"
) -> Tensor:
    """A heatmap of the accuracy matrix with the value of every cell written in it.

    Rows are the trained experiences ``i`` (the initial accuracy, when given, is a first row
    labelled ``init``), columns the test experiences ``j``; colours follow viridis from 0 (dark
    purple) to 1 (yellow), with a colour bar. Missing values (NaN) are grey.

    Args:
        accuracy_matrix: ``R``, ``[trained experiences, test experiences]``, values in [0, 1].
        initial_accuracy: accuracy per test experience before training, or None.
        title: the text above the heatmap.

    Returns:
        An RGB ``uint8`` image ``[3, H, W]``.

    Raises:
        TypeError: if an input is not a tensor.
        ValueError: for a wrong shape or values outside [0, 1].

    Example:
        >>> image = accuracy_matrix_image(torch.tensor([[0.9, 0.1], [0.6, 0.8]]))
        >>> image.dtype, image.shape[0]
        (torch.uint8, 3)
    """
    R, initial = _check(accuracy_matrix, initial_accuracy)
    rows = ([("init", initial)] if initial is not None else []) + [(str(i), R[i]) for i in range(R.shape[0])]
    columns = R.shape[1]
    n = max(len(rows), columns)
    cell = 64 if n <= 12 else max(12, 768 // n)
    value_scale = 2 if cell >= 52 else 1 if cell >= 28 else 0
    label_scale = 2 if cell >= 28 else 1
    gap = cell // 4 if initial is not None else 0  # sets the untrained row apart from R
    grid_w, grid_h = columns * cell, len(rows) * cell + gap
    y_title, x_title = "trained exp i", "test exp j"
    axis_scale = 2 if text_width(y_title, 2) <= grid_h else 1
    row_label_w = max(text_width(label, label_scale) for label, _ in rows)
    bar_w, bar_label_w = 16, text_width("1.0", label_scale)

    left = _PAD + 8 * axis_scale + _PAD // 2 + row_label_w + _PAD // 2
    top = _PAD + 16 + _PAD
    area_h = max(grid_h, text_width(y_title, axis_scale))
    grid_top = top + (area_h - grid_h) // 2
    width = max(left + grid_w + _PAD + bar_w + 10 + bar_label_w + _PAD, text_width(title, 2) + 2 * _PAD)
    height = top + area_h + _PAD // 2 + 8 * label_scale + _PAD // 2 + 8 * axis_scale + _PAD
    canvas = Canvas(width, height)

    canvas.text(title, width / 2, _PAD, BLACK, 2, align="center")
    canvas.text(y_title, _PAD, top + area_h / 2, BLACK, axis_scale, valign="middle", vertical=True)
    row_step = max(1, math.ceil((8 * label_scale + 2) / cell))  # row labels are 8 px per scale tall
    for r, (label, values) in enumerate(rows):
        y = grid_top + r * cell + (gap if initial is not None and r > 0 else 0)
        if r % row_step == 0 or (initial is not None and r == 0):
            canvas.text(label, left - _PAD // 2, y + cell / 2, BLACK, label_scale, align="right", valign="middle")
        for j, value in enumerate(values.tolist()):
            x = left + j * cell
            color = colormap(value)
            canvas.rect(x, y, x + cell - 1, y + cell - 1, color)
            if value_scale:
                text = "-" if math.isnan(value) else f"{value:.2f}"
                ink = WHITE if is_dark(color) else BLACK
                canvas.text(text, x + (cell - 1) / 2, y + (cell - 1) / 2, ink, value_scale, "center", "middle")
    column_labels = [str(j) for j in range(columns)]
    column_step = _label_step(column_labels, label_scale, cell)
    labels_y = grid_top + grid_h + (area_h - grid_h) // 2 + _PAD // 2
    for j in range(0, columns, column_step):
        canvas.text(column_labels[j], left + j * cell + cell / 2, labels_y, BLACK, label_scale, align="center")
    canvas.text(x_title, left + grid_w / 2, labels_y + 8 * label_scale + _PAD // 2, BLACK, axis_scale, align="center")

    bar_x = left + grid_w + _PAD
    for k in range(grid_h):
        canvas.rect(bar_x, grid_top + k, bar_x + bar_w, grid_top + k + 1, colormap(1 - k / max(grid_h - 1, 1)))
    canvas.outline(bar_x, grid_top, bar_x + bar_w, grid_top + grid_h, GREY)
    for value in (0.0, 0.5, 1.0):
        y = grid_top + round((1 - value) * (grid_h - 1))
        canvas.rect(bar_x + bar_w, y, bar_x + bar_w + 4, y + 1, BLACK)
        canvas.text(f"{value:.1f}", bar_x + bar_w + 10, y, BLACK, label_scale, valign="middle")
    return canvas.pixels


def accuracy_curves_image(
    accuracy_matrix: Tensor,
    initial_accuracy: Tensor | None = None,
    *,
    title: str = "Accuracy on each test experience",
) -> Tensor:
    """The accuracy on each test experience (one coloured line each) over the trained experiences.

    The x axis is the experience trained last (``init`` first when the initial accuracy is
    given), the y axis the accuracy in [0, 1]; a dashed black line is the average over the test
    experiences (the average accuracy after the last one). A legend names every line.

    Args:
        accuracy_matrix: ``R``, ``[trained experiences, test experiences]``, values in [0, 1].
        initial_accuracy: accuracy per test experience before training, or None.
        title: the text above the plot.

    Returns:
        An RGB ``uint8`` image ``[3, H, W]``.

    Raises:
        TypeError: if an input is not a tensor.
        ValueError: for a wrong shape or values outside [0, 1].

    Example:
        >>> image = accuracy_curves_image(torch.tensor([[0.9, 0.1], [0.6, 0.8]]), torch.tensor([0.5, 0.5]))
        >>> image.dtype, image.shape[0]
        (torch.uint8, 3)
    """
    R, initial = _check(accuracy_matrix, initial_accuracy)
    series = R if initial is None else torch.cat([initial[None], R])  # [points, test experiences]
    x_labels = (["init"] if initial is not None else []) + [str(i) for i in range(R.shape[0])]
    points, columns = series.shape
    average = series.nanmean(dim=1)

    entries = [(f"exp {j}", palette(j, columns)) for j in range(columns)] + [("average", BLACK)]
    entry_scale = 2 if len(entries) <= 14 else 1
    entry_h = 8 * entry_scale + 4
    legend_w = 24 + 6 + max(text_width(label, entry_scale) for label, _ in entries)
    plot_w = min(900, max(360, 80 * (points - 1)))
    plot_h = max(300, len(entries) * entry_h)
    left = _PAD + 16 + _PAD // 2 + text_width("1.0", 2) + 6
    top = _PAD + 16 + _PAD
    width = max(left + plot_w + 2 * _PAD + legend_w + _PAD, text_width(title, 2) + 2 * _PAD)
    height = top + plot_h + 6 + 16 + _PAD // 2 + 16 + _PAD
    canvas = Canvas(width, height)

    def x_of(k: int) -> float:
        return left + (k / (points - 1) * plot_w if points > 1 else plot_w / 2)

    def y_of(value: float) -> float:
        return top + (1 - value) * (plot_h - 1)

    canvas.text(title, width / 2, _PAD, BLACK, 2, align="center")
    for tick in range(6):
        value = tick / 5
        canvas.rect(left, round(y_of(value)), left + plot_w + 1, round(y_of(value)) + 1, LIGHT_GREY)
        canvas.text(f"{value:.1f}", left - 6, y_of(value), BLACK, 2, align="right", valign="middle")
    canvas.rect(left, top, left + 1, top + plot_h, BLACK)
    canvas.rect(left, top + plot_h - 1, left + plot_w + 1, top + plot_h, BLACK)
    room = plot_w / max(points - 1, 1)
    step = _label_step(x_labels, 2, int(room))
    for k in range(0, points, step):
        canvas.rect(round(x_of(k)), top + plot_h, round(x_of(k)) + 1, top + plot_h + 4, BLACK)
        canvas.text(x_labels[k], x_of(k), top + plot_h + 6, BLACK, 2, align="center")
    canvas.text("trained experience", left + plot_w / 2, top + plot_h + 6 + 16 + _PAD // 2, BLACK, 2, "center")
    canvas.text("accuracy", _PAD, top + plot_h / 2, BLACK, 2, valign="middle", vertical=True)

    lines = [(series[:, j].tolist(), palette(j, columns), 0) for j in range(columns)]
    lines.append((average.tolist(), BLACK, 6))
    for values, color, dash in lines:
        finite = [k for k, v in enumerate(values) if not math.isnan(v)]
        for a, b in itertools.pairwise(finite):
            if b == a + 1:  # no line across a missing evaluation
                canvas.line(x_of(a), y_of(values[a]), x_of(b), y_of(values[b]), color, width=2, dash=dash)
        canvas.markers([x_of(k) for k in finite], [y_of(values[k]) for k in finite], color, 6)

    legend_x = left + plot_w + 2 * _PAD
    for e, (label, color) in enumerate(entries):
        y = top + e * entry_h + entry_h / 2
        canvas.line(legend_x, y, legend_x + 24, y, color, width=3, dash=6 if label == "average" else 0)
        canvas.text(label, legend_x + 30, y, BLACK, entry_scale, valign="middle")
    return canvas.pixels
