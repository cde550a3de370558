"""Batched augmentations (RandomCrop, RandomHorizontalFlip): each image is a crop/mirror of its own,
drawn per image from the seeded global generator, as torchvision's per-image transforms."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from lightning_cl.benchmarks import RandomCrop, RandomHorizontalFlip
from lightning_cl.core.data import InMemoryDataset


def images(batch: int = 64, channels: int = 3, size: int = 8) -> torch.Tensor:
    # distinct values everywhere, so a crop's position can be read back
    return torch.arange(batch * channels * size * size, dtype=torch.float32).view(batch, channels, size, size) + 1


def crop_offset(image: torch.Tensor, padded: torch.Tensor, size: int) -> tuple[int, int] | None:
    """(top, left) where ``image`` sits in ``padded``, or None."""
    span = padded.shape[-1] - size + 1
    for top in range(span):
        for left in range(span):
            if torch.equal(padded[:, top : top + size, left : left + size], image):
                return top, left
    return None


def test_every_image_is_a_crop_of_its_own_padded_image() -> None:
    torch.manual_seed(0)
    x = images()
    out = RandomCrop(8, padding=2)(x)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=0.0)
    offsets = [crop_offset(out[i], padded[i], 8) for i in range(len(x))]
    assert all(o is not None for o in offsets)
    # offsets are drawn per image over the whole 5 x 5 range, not one for the batch
    assert len(set(offsets)) > 10
    assert {o[0] for o in offsets if o} == set(range(5))


def test_fill_per_channel_is_the_padding_value() -> None:
    torch.manual_seed(0)
    x = torch.zeros(200, 3, 4, 4)
    out = RandomCrop(4, padding=4, fill=[-1.0, -2.0, -3.0])(x)  # padding as wide as the image
    for c, value in enumerate([-1.0, -2.0, -3.0]):
        seen = set(out[:, c].unique().tolist())
        assert seen == {0.0, value}  # image pixels and padding of that channel only


def test_crop_without_padding_to_a_smaller_size() -> None:
    torch.manual_seed(0)
    x = images(batch=16, size=8)
    out = RandomCrop((5, 6))(x)
    assert out.shape == (16, 3, 5, 6)
    for i in range(16):
        found = [(t, c) for t in range(4) for c in range(3) if torch.equal(x[i, :, t : t + 5, c : c + 6], out[i])]
        assert found


def test_seeded_draws_repeat() -> None:
    x = images()
    crop, flip = RandomCrop(8, padding=4), RandomHorizontalFlip()
    torch.manual_seed(3)
    first = flip(crop(x))
    torch.manual_seed(3)
    assert torch.equal(flip(crop(x)), first)


def test_flip_mirrors_about_half_the_images() -> None:
    torch.manual_seed(0)
    x = images(batch=1000, channels=1, size=4)
    out = RandomHorizontalFlip(p=0.5)(x)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped ^ kept).all())  # each image is itself or its mirror
    assert 450 < int(flipped.sum()) < 550
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(-1))


def test_in_the_train_group_only_training_reads_are_augmented() -> None:
    # how the streams use it: train_transform goes in the datasets' "train" transform group
    x = images(batch=6)
    data = InMemoryDataset(x, torch.arange(6)).with_transform(RandomHorizontalFlip(p=1.0), group="train")
    train = data.train().__getitems__(range(6)).tensors[0]
    test = data.eval().__getitems__(range(6)).tensors[0]
    assert torch.equal(test, x)
    assert torch.equal(train, x.flip(-1))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RandomCrop(0), r"`size`: expected a positive int or \(height, width\), got 0"),
        (lambda: RandomCrop((32, 32, 3)), r"`size`"),
        (lambda: RandomCrop(32, padding=-1), r"`padding`: expected a non-negative int, got -1"),
        (lambda: RandomCrop(32, fill=[]), r"`fill`: expected a finite number or one per channel"),
        (lambda: RandomCrop(32, fill=float("nan")), r"`fill`"),
        (lambda: RandomHorizontalFlip(p=1.5), r"`p`: expected a probability in \[0, 1\], got 1\.5"),
        (lambda: RandomHorizontalFlip(p=True), r"`p`"),
    ],
)
def test_bad_arguments(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_name_the_transform() -> None:
    with pytest.raises(ValueError, match=r"RandomCrop: expected a batch \[B, C, H, W\], got shape \(3, 8, 8\)"):
        RandomCrop(8)(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"RandomCrop: crop \(10, 10\) is larger than the padded images \(8, 8\)"):
        RandomCrop(10)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"RandomCrop: `fill` has 2 values for images with 3 channels"):
        RandomCrop(8, fill=[0.0, 1.0])(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip: expected a batch"):
        RandomHorizontalFlip()(torch.zeros(3))
