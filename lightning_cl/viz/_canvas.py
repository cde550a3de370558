"""A minimal raster canvas on a ``uint8`` tensor: rectangles, lines and bitmap text."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_cl.viz._font import text_mask, text_size

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (128, 128, 128)
LIGHT_GREY: Color = (225, 225, 225)

# viridis sampled at nine evenly spaced points: perceptually uniform and readable in grey scale
_VIRIDIS = torch.tensor(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=torch.float64,
)

# matplotlib's "tab10": distinct hues for up to ten lines
_PALETTE: tuple[Color, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def colormap(value: float) -> Color:
    """The viridis colour of ``value`` in [0, 1] (clamped); grey for NaN."""
    if math.isnan(value):
        return GREY
    position = min(max(value, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = min(int(position), len(_VIRIDIS) - 2)
    weight = position - low
    rgb = _VIRIDIS[low] * (1 - weight) + _VIRIDIS[low + 1] * weight
    r, g, b = (round(c) for c in rgb.tolist())
    return r, g, b


def is_dark(color: Color) -> bool:
    """Whether white text reads better than black text on ``color`` (relative luminance)."""
    r, g, b = color
    return 0.299 * r + 0.587 * g + 0.114 * b < 140


def palette(index: int, count: int) -> Color:
    """The colour of line ``index`` out of ``count``: tab10 up to ten lines, else viridis."""
    if count <= len(_PALETTE):
        return _PALETTE[index]
    return colormap(index / max(count - 1, 1) * 0.9)


class Canvas:
    """An RGB image ``[3, height, width]`` of ``uint8`` that shapes are drawn onto (clipped)."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = torch.empty(3, height, width, dtype=torch.uint8)
        self.pixels[:] = torch.tensor(background, dtype=torch.uint8).view(3, 1, 1)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill the pixels ``x0 <= x < x1``, ``y0 <= y < y1``."""
        x0, x1 = max(x0, 0), min(x1, self.width)
        y0, y1 = max(y0, 0), min(y1, self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[:, y0:y1, x0:x1] = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)

    def outline(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """A one-pixel frame around ``[x0, x1) x [y0, y1)``."""
        self.rect(x0, y0, x1, y0 + 1, color)
        self.rect(x0, y1 - 1, x1, y1, color)
        self.rect(x0, y0, x0 + 1, y1, color)
        self.rect(x1 - 1, y0, x1, y1, color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 1, dash: int = 0) -> None:
        """A straight line with a square brush of ``width`` pixels; ``dash`` > 0 draws dashes that long."""
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        t = torch.linspace(0, 1, steps, dtype=torch.float64)
        xs = (x0 + (x1 - x0) * t).round().long()
        ys = (y0 + (y1 - y0) * t).round().long()
        if dash > 0:
            keep = (torch.arange(steps) // dash) % 2 == 0
            xs, ys = xs[keep], ys[keep]
        self._stamp(xs, ys, color, width)

    def markers(self, xs: Sequence[float], ys: Sequence[float], color: Color, size: int) -> None:
        """Filled squares of ``size`` pixels centred on the points."""
        for x, y in zip(xs, ys):
            half = size // 2
            self.rect(round(x) - half, round(y) - half, round(x) - half + size, round(y) - half + size, color)

    def _stamp(self, xs: Tensor, ys: Tensor, color: Color, width: int) -> None:
        offsets = torch.arange(width) - (width - 1) // 2
        px = (xs[:, None, None] + offsets[None, :, None]).expand(-1, width, width).reshape(-1)
        py = (ys[:, None, None] + offsets[None, None, :]).expand(-1, width, width).reshape(-1)
        inside = (px >= 0) & (px < self.width) & (py >= 0) & (py < self.height)
        px, py = px[inside], py[inside]
        for channel, value in enumerate(color):
            self.pixels[channel, py, px] = value

    def text(
        self,
        text: str,
        x: float,
        y: float,
        color: Color = BLACK,
        scale: int = 1,
        align: str = "left",
        valign: str = "top",
        vertical: bool = False,
    ) -> None:
        """Draw ``text`` with its ``align`` x {left, center, right} / ``valign`` y {top, middle, bottom} at (x, y).

        ``vertical`` text reads from bottom to top (a y-axis title); alignment applies to the
        rotated box.
        """
        mask = text_mask(text, scale)
        if vertical:
            mask = torch.rot90(mask, 1)
        height, width = mask.shape
        left = round(x - {"left": 0.0, "center": width / 2, "right": float(width)}[align])
        top = round(y - {"top": 0.0, "middle": height / 2, "bottom": float(height)}[valign])
        # clip the mask to the canvas
        mx0, my0 = max(0, -left), max(0, -top)
        mx1, my1 = min(width, self.width - left), min(height, self.height - top)
        if mx0 >= mx1 or my0 >= my1:
            return
        mask = mask[my0:my1, mx0:mx1]
        region = self.pixels[:, top + my0 : top + my1, left + mx0 : left + mx1]
        for channel, value in enumerate(color):
            region[channel][mask] = value


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` at ``scale``."""
    return text_size(text, scale)[0]
