"""MlpVAE: shapes, the loss against a hand computation, seeded sampling, training on digits, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightning_cl.benchmarks import SplitDigits
from lightning_cl.models.vae import MlpVAE


@pytest.mark.parametrize(
    ("shape", "latent_dim", "batch_norm"),
    [((1, 8, 8), 4, True), ((3, 4, 4), 2, False), ((10,), 1, True)],
    ids=["image", "rgb", "flat"],
)
def test_shapes(shape: tuple[int, ...], latent_dim: int, batch_norm: bool) -> None:
    torch.manual_seed(0)
    vae = MlpVAE(shape, latent_dim=latent_dim, encoder_sizes=(16, 8), decoder_sizes=(8,), batch_norm=batch_norm)
    x = torch.rand(5, *shape)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (5, latent_dim)
    reconstruction, mean, logvar = vae(x)
    assert reconstruction.shape == (5, *shape)
    assert vae.decode_logits(mean).shape == (5, math.prod(shape))
    assert vae.sample(7).shape == (7, *shape)
    assert vae.loss(x).shape == ()


def tiny_vae(reconstruction: str, input_range: tuple[float, float]) -> MlpVAE:
    """Inputs of 2 values, a 1-d latent code, no hidden layers, weights set by hand."""
    vae = MlpVAE((2,), latent_dim=1, encoder_sizes=(), decoder_sizes=(), input_range=input_range,
                 reconstruction=reconstruction, batch_norm=False)  # fmt: skip
    with torch.no_grad():
        vae.calc_mean.weight.copy_(torch.tensor([[0.5, -1.0]]))
        vae.calc_mean.bias.fill_(0.1)
        vae.calc_logvar.weight.copy_(torch.tensor([[0.2, 0.3]]))
        vae.calc_logvar.bias.fill_(-0.4)
        decoder = vae.decoder[-1]
        decoder.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        decoder.bias.copy_(torch.tensor([0.0, 0.5]))
    return vae


@pytest.mark.parametrize(
    ("reconstruction", "input_range"),
    [("bce", (0.0, 1.0)), ("bce", (-1.0, 3.0)), ("mse", (0.0, 1.0)), ("mse", (-1.0, 3.0))],
)
def test_loss_is_reconstruction_plus_kl_by_hand(reconstruction: str, input_range: tuple[float, float]) -> None:
    vae = tiny_vae(reconstruction, input_range)
    x = torch.tensor([[0.2, 0.9], [0.6, 0.1]])
    loss = vae.loss(x, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(2, 1, generator=torch.Generator().manual_seed(3))[:, 0].tolist()

    low, high = input_range
    expected = 0.0
    for (x1, x2), e in zip(x.tolist(), eps):
        mean = 0.5 * x1 - 1.0 * x2 + 0.1
        logvar = 0.2 * x1 + 0.3 * x2 - 0.4
        z = mean + math.exp(logvar / 2) * e
        logits = (2.0 * z, -1.0 * z + 0.5)
        for value, logit in zip((x1, x2), logits):
            p = 1 / (1 + math.exp(-logit))
            if reconstruction == "bce":
                t = min(max((value - low) / (high - low), 0.0), 1.0)
                expected += -(t * math.log(p) + (1 - t) * math.log(1 - p))
            else:
                expected += (low + (high - low) * p - value) ** 2
        expected += 0.5 * (-1 - logvar + math.exp(logvar) + mean**2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_samples_are_seeded_in_range_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    vae = MlpVAE((1, 8, 8), latent_dim=4, encoder_sizes=(16,), decoder_sizes=(16,), input_range=(-0.5, 2.0)).eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        first = vae.sample(6, generator=torch.Generator().manual_seed(1))
        again = vae.sample(6, generator=torch.Generator().manual_seed(1))
        other = vae.sample(6, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert float(first.min()) >= -0.5 and float(first.max()) <= 2.0
    # forward and loss draw their noise from the generator too
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(
        vae.loss(x, generator=torch.Generator().manual_seed(5)), vae.loss(x, generator=torch.Generator().manual_seed(5))
    )


def test_loss_decreases_when_trained_on_digits() -> None:
    torch.manual_seed(0)
    data = SplitDigits(num_experiences=5, class_order=list(range(10))).train_stream[0].dataset
    x = data.__getitems__(list(range(len(data)))).tensors[0]  # digits 0 and 1, values in [0, 1]
    vae = MlpVAE((1, 8, 8), latent_dim=4, encoder_sizes=(64,), decoder_sizes=(64,))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    vae.eval()
    with torch.no_grad():
        before = vae.loss(x, generator=torch.Generator().manual_seed(9)).item() / len(x)
    vae.train()
    for _ in range(30):
        for index in torch.randperm(len(x), generator=g).split(32):
            loss = vae.loss(x[index], generator=g)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    vae.eval()
    with torch.no_grad():
        after = vae.loss(x, generator=torch.Generator().manual_seed(9)).item() / len(x)
    # per digit (64 pixels): 45 nats before, 21 after when written
    assert after < 0.7 * before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shape": ()}, ValueError, "`shape`"),
        ({"shape": (1, 0)}, ValueError, r"`shape\[1\]`"),
        ({"shape": "abc"}, TypeError, "`shape`"),
        ({"latent_dim": 0}, ValueError, "`latent_dim`"),
        ({"latent_dim": 2.5}, ValueError, "`latent_dim`"),
        ({"encoder_sizes": (16, -1)}, ValueError, r"`encoder_sizes\[1\]`"),
        ({"decoder_sizes": 16}, TypeError, "`decoder_sizes`"),
        ({"input_range": (1.0, 0.0)}, ValueError, "`input_range`"),
        ({"input_range": (0.0,)}, TypeError, "`input_range`"),
        ({"input_range": (0.0, "1")}, TypeError, "`input_range`"),
        ({"reconstruction": "l1"}, ValueError, "`reconstruction`"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    arguments = {"shape": (1, 8, 8), **kwargs}
    with pytest.raises(error, match=match):
        MlpVAE(**arguments)
