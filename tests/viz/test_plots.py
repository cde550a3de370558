"""The pictures of lightning_cl.viz: font, canvas, colour scale, heatmap and curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.io import decode_png

from lightning_cl.viz import accuracy_curves_image, accuracy_matrix_image, encode_png, write_png
from lightning_cl.viz._canvas import BLACK, GREY, Canvas, colormap, is_dark, palette
from lightning_cl.viz._font import _GLYPHS, text_mask, text_size

R3 = torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.8, 0.05], [0.4, 0.7, 1.0]])
B3 = torch.tensor([0.2, 0.15, 0.3])


def count(image: torch.Tensor, color: tuple[int, int, int]) -> int:
    return int((image == torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)).all(0).sum())


@pytest.mark.parametrize("char", sorted(_GLYPHS))
def test_every_glyph_is_five_by_seven_or_eight(char: str) -> None:
    rows = _GLYPHS[char].split()
    assert len(rows) in (7, 8)
    assert all(len(row) == 5 and set(row) <= {"#", "."} for row in rows)


def test_text_mask_places_glyphs_with_one_blank_column() -> None:
    mask = text_mask("1.", scale=1)
    assert mask.shape == (8, 11) and text_size("1.") == (11, 8)
    one = torch.tensor([[c == "#" for c in row] for row in _GLYPHS["1"].split()])
    assert torch.equal(mask[:7, :5], one)
    assert not mask[:, 5].any()  # the gap between characters
    assert mask[5:7, 7:9].all()  # the dot
    assert text_mask("1.", scale=3).shape == (24, 33)


def test_unknown_characters_are_drawn_as_question_marks() -> None:
    assert torch.equal(text_mask("€"), text_mask("?"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, (68, 1, 84)), (1.0, (253, 231, 37)), (-3.0, (68, 1, 84)), (7.0, (253, 231, 37)), (0.5, (33, 144, 141))],
)
def test_colormap_anchors_and_clamping(value: float, expected: tuple[int, int, int]) -> None:
    assert colormap(value) == expected


def test_colormap_interpolates_between_anchors_and_greys_nan() -> None:
    # halfway between the anchors at 0 and 1/8: (68+71)/2, (1+44)/2, (84+122)/2
    assert colormap(1 / 16) == (70, 22, 103)
    assert colormap(math.nan) == GREY


def test_text_colour_contrast() -> None:
    assert is_dark(colormap(0.0)) and not is_dark(colormap(1.0))


def test_palette_is_distinct_for_ten_lines_and_spreads_beyond() -> None:
    assert len({palette(i, 10) for i in range(10)}) == 10
    assert len({palette(i, 30) for i in range(30)}) == 30


def test_canvas_rect_is_clipped() -> None:
    canvas = Canvas(10, 6)
    canvas.rect(-5, -5, 3, 2, BLACK)
    canvas.rect(8, 4, 50, 50, BLACK)
    assert count(canvas.pixels, BLACK) == 3 * 2 + 2 * 2


def test_canvas_line_covers_both_ends_and_dashes_skip() -> None:
    canvas = Canvas(20, 20)
    canvas.line(0, 0, 19, 19, BLACK)
    assert count(canvas.pixels, BLACK) == 20
    assert canvas.pixels[:, 0, 0].tolist() == [0, 0, 0] and canvas.pixels[:, 19, 19].tolist() == [0, 0, 0]
    dashed = Canvas(20, 3)
    dashed.line(0, 1, 19, 1, BLACK, dash=5)
    assert count(dashed.pixels, BLACK) == 10
    thick = Canvas(20, 20)
    thick.line(2, 10, 17, 10, BLACK, width=3)
    assert count(thick.pixels, BLACK) == 18 * 3  # the square brush reaches one pixel past each end


def test_canvas_text_outside_is_clipped_not_an_error() -> None:
    canvas = Canvas(30, 10)
    canvas.text("12345678", 25, -3, BLACK, scale=2)
    canvas.text("x", -100, -100, BLACK)
    canvas.text("1", 15, 5, BLACK, align="center", valign="middle", vertical=True)
    assert count(canvas.pixels, BLACK) > 0


@pytest.mark.parametrize("initial", [None, B3])
def test_heatmap_colours_every_cell(initial: torch.Tensor | None) -> None:
    image = accuracy_matrix_image(R3, initial)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    # cells are 64 px (63 coloured): most of each cell has its value's colour, text aside
    for value in (0.9, 0.6, 0.4, 0.7, 0.8):
        assert count(image, colormap(value)) > 0.6 * 63 * 63
    assert count(image, colormap(0.0)) > 0.6 * 63 * 63
    if initial is not None:
        assert count(image, colormap(0.15)) > 0.6 * 63 * 63
    # the value of the cells is written in them: white on dark cells
    assert count(image, (255, 255, 255)) > 0


def test_heatmap_with_initial_row_is_taller_and_deterministic() -> None:
    plain, with_initial = accuracy_matrix_image(R3), accuracy_matrix_image(R3, B3)
    assert with_initial.shape[1] > plain.shape[1] + 64
    assert torch.equal(plain, accuracy_matrix_image(R3.clone()))


def test_heatmap_missing_row_is_grey() -> None:
    R = R3.clone()
    R[1] = float("nan")
    assert count(accuracy_matrix_image(R), GREY) > 3 * 0.6 * 63 * 63


def test_heatmap_of_a_long_stream_stays_bounded() -> None:
    image = accuracy_matrix_image(torch.rand(50, 50, generator=torch.Generator().manual_seed(0)))
    assert image.shape[1] < 1100 and image.shape[2] < 1100


@pytest.mark.parametrize("initial", [None, B3])
def test_curves_draw_one_colour_per_experience_and_the_average(initial: torch.Tensor | None) -> None:
    image = accuracy_curves_image(R3, initial)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    for j in range(3):
        assert count(image, palette(j, 3)) > 100
    assert count(image, palette(3, 10)) == 0  # no fourth line
    assert count(image, BLACK) > 0


def test_curves_of_a_single_row() -> None:
    assert accuracy_curves_image(torch.tensor([[0.5, 0.25]])).shape[0] == 3


# torchvision's decoder is the independent reference for our encoder
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("compression", [0, 9])
def test_png_decodes_to_the_same_pixels(channels: int, compression: int) -> None:
    image = torch.randint(0, 256, (channels, 7, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    png = encode_png(image, compression=compression)
    assert torch.equal(decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8)), image)


def test_plots_survive_png_round_trip(tmp_path: Path) -> None:
    image = accuracy_curves_image(R3, B3)
    write_png(image, tmp_path / "curves.png")
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no partial file left behind
    data = (tmp_path / "curves.png").read_bytes()
    assert torch.equal(decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)), image)


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (torch.zeros(3, 4, 4), {}, TypeError, "`image`: expected a torch.uint8 tensor, got a torch.float32"),
        ([[0]], {}, TypeError, "`image`: expected a torch.uint8 tensor, got list"),
        (torch.zeros(4, 4, dtype=torch.uint8), {}, ValueError, r"`image`: expected shape \[1 or 3, H, W\]"),
        (torch.zeros(4, 4, 4, dtype=torch.uint8), {}, ValueError, "got \\(4, 4, 4\\)"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {"compression": 10}, ValueError, "`compression`: expected"),
    ],
)
def test_png_bad_input(image: Any, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        encode_png(image, **kwargs)


@pytest.mark.parametrize("draw", [accuracy_matrix_image, accuracy_curves_image])
@pytest.mark.parametrize(
    ("R", "initial", "error", "match"),
    [
        ([[0.5]], None, TypeError, "`accuracy_matrix`: expected a torch.Tensor"),
        (torch.tensor([0.5, 0.2]), None, ValueError, "`accuracy_matrix`: expected a non-empty 2-D"),
        (torch.empty(0, 0), None, ValueError, "non-empty 2-D"),
        (torch.tensor([[50.0, 20.0]]), None, ValueError, r"`accuracy_matrix`: expected accuracies in \[0, 1\]"),
        (torch.tensor([[0.5, 0.2]]), [0.1, 0.1], TypeError, "`initial_accuracy`: expected a torch.Tensor"),
        (torch.tensor([[0.5, 0.2]]), torch.tensor([0.1]), ValueError, "`initial_accuracy`: expected a 1-D tensor of 2"),
        (torch.tensor([[0.5, 0.2]]), torch.tensor([0.1, -0.1]), ValueError, "`initial_accuracy`: expected accuracies"),
    ],
)
def test_bad_input(draw: Any, R: Any, initial: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        draw(R, initial)
