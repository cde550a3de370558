"""Batched input transforms (picklable, so loaders with worker processes can use them).

``Compose`` lives in :mod:`lightning_cl.core.data` (datasets compose transforms) and is re-exported here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_cl.core.data import Compose

__all__ = ["Compose", "Normalize", "PerSample", "Permute", "RandomCrop", "RandomHorizontalFlip", "Rotate"]


class Normalize:
    """``(x * scale - mean) / std`` per channel, on a batch ``[B, C, ...]`` of any dtype.

    Args:
        mean: per-channel mean (after scaling).
        std: per-channel standard deviation (after scaling).
        scale: factor applied first (``1/255`` turns uint8 pixels into [0, 1]).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 1.0) -> None:
        if len(mean) != len(std):
            raise ValueError(f"`std`: expected {len(mean)} values (one per mean), got {len(std)}.")
        if any(s <= 0 for s in std):
            raise ValueError(f"`std`: expected positive values, got {list(std)}.")
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.scale = scale

    def __call__(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # one multiply and one add in place on a fresh float copy: several times faster than
        # (x * scale - mean) / std, which allocates a temporary per operation
        gain = (self.scale / self.std).view(shape)
        offset = (-self.mean / self.std).view(shape)
        return x.to(torch.float32, copy=True).mul_(gain).add_(offset)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, scale={self.scale})"


class Permute:
    """A fixed permutation of the pixels of a batch ``[B, ...]`` (PermutedMNIST).

    Args:
        permutation: a permutation of ``range(number of pixels)``.
    """

    def __init__(self, permutation: Tensor) -> None:
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ValueError(f"`permutation`: expected a permutation of 0..{len(permutation) - 1}.")
        self.permutation = permutation

    def __call__(self, x: Tensor) -> Tensor:
        # index_select is a few times faster than advanced indexing on the second dimension
        return torch.index_select(x.reshape(len(x), -1), 1, self.permutation).reshape(x.shape)

    def __repr__(self) -> str:
        return f"Permute(pixels={len(self.permutation)})"


class Rotate:
    """A fixed rotation of the images of a batch ``[..., H, W]`` (RotatedMNIST).

    The rotation turns the images ``angle`` degrees counter-clockwise about their centre, as
    ``torchvision.transforms.functional.rotate`` does: bilinear interpolation, zeros outside the
    image, the same size out as in. Every image of the batch shares one sampling grid, so a whole
    batch costs one ``grid_sample`` call. Integer inputs (uint8 pixels) come out as float32.

    Args:
        angle: rotation in degrees, counter-clockwise.

    Example:
        >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> Rotate(90)(x).round(decimals=4).tolist()
        [[[[2.0, 4.0], [1.0, 3.0]]]]
    """

    def __init__(self, angle: float) -> None:
        if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
            raise TypeError(f"`angle`: expected a number of degrees, got {type(angle).__name__}.")
        if not math.isfinite(angle):
            raise ValueError(f"`angle`: expected a finite number of degrees, got {angle}.")
        self.angle: float = float(angle)

    def theta(self, height: int, width: int) -> Tensor:
        """The ``[2, 3]`` matrix of ``affine_grid``: output to input, in normalised coordinates."""
        radians = math.radians(self.angle)
        cos, sin = math.cos(radians), math.sin(radians)
        # In pixels (y down) an output point p samples the input at [[cos, -sin], [sin, cos]] p;
        # normalised coordinates scale x by 2/W and y by 2/H, hence the aspect-ratio factors.
        return torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=torch.float64)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"Rotate: expected images [..., H, W], got shape {tuple(x.shape)}.")
        height, width = x.shape[-2:]
        images = x if x.is_floating_point() else x.float()
        # every image (and channel) is a channel of one grid_sample input: one grid for the batch
        flat = images.reshape(1, -1, height, width)
        theta = self.theta(height, width).to(device=x.device, dtype=images.dtype)
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, height, width], align_corners=False)
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(images.shape)

    def __repr__(self) -> str:
        return f"Rotate(angle={self.angle})"


class RandomCrop:
    """Pad a batch ``[B, C, H, W]`` and crop every image at its own random offset (augmentation).

    ``RandomCrop(32, padding=4)`` is torchvision's CIFAR augmentation, done for the whole batch in
    one gather instead of image by image. The offsets are drawn from torch's global generator (on
    the batch's device), so a seeded run draws the same crops and a checkpoint's RNG state
    resumes them.

    The padding value is ``fill`` *after* normalisation: 0 is the mean colour; torchvision pads
    the raw image with black before normalising, which is ``-mean / std`` per channel here
    (e.g. ``[-1.989, -1.980, -1.707]`` for CIFAR-10).

    Args:
        size: output height and width (an int for a square).
        padding: pixels added on each side before cropping.
        fill: the padding value, one number or one per channel.

    Example:
        >>> crop = RandomCrop(4, padding=1)
        >>> crop(torch.zeros(8, 3, 4, 4)).shape
        torch.Size([8, 3, 4, 4])
    """

    def __init__(self, size: int | Sequence[int], padding: int = 0, fill: float | Sequence[float] = 0.0) -> None:
        sizes = (size, size) if isinstance(size, int) else tuple(size)
        if len(sizes) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            raise ValueError(f"`size`: expected a positive int or (height, width), got {size!r}.")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"`padding`: expected a non-negative int, got {padding!r}.")
        fills = list(fill) if isinstance(fill, Sequence) else [fill]
        if not fills or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in fills):
            raise ValueError(f"`fill`: expected a finite number or one per channel, got {fill!r}.")
        self.size: tuple[int, int] = (int(sizes[0]), int(sizes[1]))
        self.padding = padding
        self.fill = torch.tensor([float(v) for v in fills], dtype=torch.float32)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"RandomCrop: expected a batch [B, C, H, W], got shape {tuple(x.shape)}.")
        batch, channels, height, width = x.shape
        if len(self.fill) not in (1, channels):
            raise ValueError(f"RandomCrop: `fill` has {len(self.fill)} values for images with {channels} channels.")
        p = self.padding
        padded = x.new_empty(batch, channels, height + 2 * p, width + 2 * p)
        padded[:] = self.fill.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        padded[:, :, p : p + height, p : p + width] = x
        out_h, out_w = self.size
        if out_h > height + 2 * p or out_w > width + 2 * p:
            raise ValueError(
                f"RandomCrop: crop {self.size} is larger than the padded images ({height + 2 * p}, {width + 2 * p})."
            )
        top = torch.randint(0, height + 2 * p - out_h + 1, (batch, 1, 1), device=x.device)
        left = torch.randint(0, width + 2 * p - out_w + 1, (batch, 1, 1), device=x.device)
        rows = top + torch.arange(out_h, device=x.device).view(1, -1, 1)  # [B, h, 1]
        cols = left + torch.arange(out_w, device=x.device).view(1, 1, -1)  # [B, 1, w]
        index = torch.arange(batch, device=x.device).view(-1, 1, 1)
        # advanced indexing around the channel slice puts the channels last: [B, h, w, C]
        return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill.tolist()})"


class RandomHorizontalFlip:
    """Mirror each image of a batch ``[B, ..., W]`` left-right with probability ``p`` (augmentation).

    One draw per image from torch's global generator on the batch's device, as ``RandomCrop``.

    Args:
        p: probability that an image is flipped.

    Example:
        >>> flip = RandomHorizontalFlip(p=1.0)
        >>> flip(torch.tensor([[[[1.0, 2.0]]]])).tolist()
        [[[[2.0, 1.0]]]]
    """

    def __init__(self, p: float = 0.5) -> None:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"`p`: expected a probability in [0, 1], got {p!r}.")
        self.p: float = float(p)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"RandomHorizontalFlip: expected a batch [B, ..., W], got shape {tuple(x.shape)}.")
        flip = torch.rand(len(x), device=x.device) < self.p
        return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class PerSample:
    """Marks a transform that takes one sample, not a batch: applies it to each row of a batch.

    The in-memory datasets call their transforms on whole batches ``[B, C, H, W]``; a transform
    written for one image ``[C, H, W]`` (most torchvision augmentations) goes in a ``PerSample``,
    which calls it on every row and stacks the results. ``dataset[i]`` then equals row ``i`` of a
    batch (for random transforms: under the same RNG state). Batched transforms are much faster;
    use this only for those that cannot be batched.

    Args:
        transform: a callable on one sample ``[C, H, W]`` returning a tensor.

    Example:
        >>> flip = PerSample(lambda img: img.flip(-1))
        >>> flip(torch.tensor([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])).tolist()
        [[[[2.0, 1.0]]], [[[4.0, 3.0]]]]
    """

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        if not callable(transform):
            raise TypeError(f"`transform`: expected a callable, got {type(transform).__name__}.")
        self.transform = transform

    def __call__(self, x: Tensor) -> Tensor:
        return torch.stack([self.transform(row) for row in x])

    def __repr__(self) -> str:
        return f"PerSample({self.transform!r})"
