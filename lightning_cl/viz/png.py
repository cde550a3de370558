"""PNG encoding of ``uint8`` image tensors with the standard library's zlib.

torchvision's image codecs are deprecated since 0.29 (in favour of TorchCodec), and a PNG of an
RGB image is only four chunks around a zlib stream, so it is written here.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import torch
from torch import Tensor

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2}  # grey, RGB


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: Tensor, compression: int = 6) -> bytes:
    """The PNG file of a ``uint8`` image ``[C, H, W]`` (C = 1 grey or 3 RGB).

    Args:
        image: the pixels, channels first, as ``torchvision.io`` takes them.
        compression: zlib level, 0 (none, fastest) to 9 (smallest).

    Returns:
        The bytes of the PNG file.

    Raises:
        TypeError: if ``image`` is not a ``uint8`` tensor.
        ValueError: for another shape, or a ``compression`` outside 0-9.

    Example:
        >>> png = encode_png(torch.zeros(3, 2, 4, dtype=torch.uint8))
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", len(png) < 100
        (True, True)
    """
    if not isinstance(image, Tensor) or image.dtype != torch.uint8:
        got = f"a {image.dtype} tensor" if isinstance(image, Tensor) else type(image).__name__
        raise TypeError(f"`image`: expected a torch.uint8 tensor, got {got}.")
    if image.dim() != 3 or image.shape[0] not in _COLOR_TYPE or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"`image`: expected shape [1 or 3, H, W] with H, W >= 1, got {tuple(image.shape)}.")
    if isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 9:
        raise ValueError(f"`compression`: expected an integer from 0 to 9, got {compression!r}.")
    channels, height, width = image.shape
    rows = image.detach().cpu().permute(1, 2, 0).reshape(height, width * channels)
    # every scanline starts with its filter type: 0, none
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1).contiguous()
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), compression))
        + _chunk(b"IEND", b"")
    )


def write_png(image: Tensor, path: str | Path) -> None:
    """Write ``image`` (``uint8`` ``[C, H, W]``) as a PNG file; readers never see a partial file.

    Raises:
        TypeError: if ``image`` is not a ``uint8`` tensor.
        ValueError: for a wrong shape.
    """
    target = Path(path)
    data = encode_png(image)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
