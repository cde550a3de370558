"""MlpVAE: a fully connected variational autoencoder, the default generator of generative replay."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

RECONSTRUCTIONS = ("bce", "mse")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`: expected a positive integer, got {value!r}.")
    return value


def _sizes(value: object, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}`: expected a sequence of positive integers, got {type(value).__name__} {value!r}.")
    return tuple(_positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def _layers(sizes: Sequence[int], batch_norm: bool) -> list[nn.Module]:
    """``Linear (-> BatchNorm) -> ReLU`` from each size to the next."""
    layers: list[nn.Module] = []
    for width, size in itertools.pairwise(sizes):
        layers.append(nn.Linear(width, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.ReLU())
    return layers


class MlpVAE(nn.Module):
    """A variational autoencoder of MLPs (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014).

    The generator of :class:`~lightning_cl.callbacks.generative_replay.GenerativeReplay` by
    default, after Avalanche's ``MlpVAE``: the encoder flattens the input and runs
    ``Linear -> BatchNorm -> ReLU`` layers of ``encoder_sizes``, then two linear heads give the
    mean and log-variance of ``q(z | x)``; the decoder runs ``decoder_sizes`` the same way and a
    last linear layer gives one Bernoulli logit per input value. Samples are ``sigmoid(logits)``
    mapped affinely onto ``input_range`` and shaped as ``shape``: a VAE of normalised MNIST
    (``input_range`` = the normalised values of pixels 0 and 1) returns normalised images, as
    Avalanche's decoder does with its inverse ``Normalize``.

    :meth:`loss` is the negative ELBO summed over the batch, as Avalanche's ``VAE_loss``:
    a reconstruction term plus ``KL(q(z|x) || N(0, I)) = 0.5 * sum(-1 - logvar + exp(logvar) + mean^2)``.
    The reconstruction term is the binary cross-entropy of the logits against the input mapped
    to [0, 1] (``"bce"``, the Bernoulli likelihood of Kingma & Welling and of Shin et al.) or
    Avalanche's summed squared error between the sample-space reconstruction and the input
    (``"mse"``). Unlike Avalanche's ``MlpVAE``, the reparameterisation uses the standard
    deviation ``exp(logvar / 2)`` (Avalanche multiplies the noise by ``0.5 * exp(logvar)``).

    Randomness is explicit: :meth:`sample`, :meth:`forward` and :meth:`loss` take an optional
    ``torch.Generator`` (on any device; the noise is drawn on the generator's device and moved
    to the model's), else they draw from the global generator.

    Args:
        shape: shape of one input sample, e.g. ``(1, 28, 28)``.
        latent_dim: dimension of the latent code ``z`` (Avalanche's ``nhid``).
        encoder_sizes: widths of the encoder's hidden layers (Avalanche: 400, 128).
        decoder_sizes: widths of the decoder's hidden layers (Avalanche: 64, 128, 256).
        input_range: ``(low, high)``: the values an input takes for pixel intensities 0 and 1
            (``(0, 1)`` for raw images in [0, 1]; ``(-0.1307 / 0.3081, 0.8693 / 0.3081)`` for
            MNIST normalised with mean 0.1307 and std 0.3081).
        reconstruction: ``"bce"`` or ``"mse"`` (see above).
        batch_norm: BatchNorm after each hidden linear layer (as Avalanche).

    Raises:
        ValueError: for a non-positive size or latent dimension, an empty ``shape``, a range
            with ``low >= high`` or an unknown ``reconstruction``.
        TypeError: for sizes or a range that are not sequences of numbers.

    Example:
        >>> import torch
        >>> vae = MlpVAE((1, 8, 8), latent_dim=4, encoder_sizes=(32,), decoder_sizes=(32,))
        >>> vae.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 8, 8])
        >>> x = torch.rand(5, 1, 8, 8)
        >>> loss = vae.loss(x, generator=torch.Generator().manual_seed(0))  # summed over the batch
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """

    def __init__(
        self,
        shape: Sequence[int],
        latent_dim: int = 16,
        encoder_sizes: Sequence[int] = (400, 128),
        decoder_sizes: Sequence[int] = (64, 128, 256),
        input_range: tuple[float, float] = (0.0, 1.0),
        reconstruction: str = "bce",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.shape = _sizes(shape, "shape")
        if not self.shape:
            raise ValueError("`shape`: expected the shape of one sample, e.g. (1, 28, 28), got an empty shape.")
        self.latent_dim = _positive_int(latent_dim, "latent_dim")
        encoder = _sizes(encoder_sizes, "encoder_sizes")
        decoder = _sizes(decoder_sizes, "decoder_sizes")
        if isinstance(input_range, (str, bytes)) or not isinstance(input_range, Sequence) or len(input_range) != 2:
            raise TypeError(f"`input_range`: expected a pair (low, high) of numbers, got {input_range!r}.")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in input_range):
            raise TypeError(f"`input_range`: expected a pair (low, high) of numbers, got {input_range!r}.")
        low, high = float(input_range[0]), float(input_range[1])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"`input_range`: expected finite numbers with low < high, got {input_range!r}.")
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"`reconstruction`: expected one of {list(RECONSTRUCTIONS)}, got {reconstruction!r}.")
        self.input_range = (low, high)
        self.reconstruction = reconstruction
        self.in_features = math.prod(self.shape)
        sizes = (self.in_features, *encoder)
        self.encoder = nn.Sequential(nn.Flatten(), *_layers(sizes, batch_norm))
        self.calc_mean = nn.Linear(sizes[-1], self.latent_dim)
        self.calc_logvar = nn.Linear(sizes[-1], self.latent_dim)
        sizes = (self.latent_dim, *decoder)
        self.decoder = nn.Sequential(*_layers(sizes, batch_norm), nn.Linear(sizes[-1], self.in_features))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``[B, latent_dim]`` of ``q(z | x)``."""
        h = self.encoder(x)
        return self.calc_mean(h), self.calc_logvar(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Bernoulli logits ``[B, prod(shape)]`` of the inputs (mapped to [0, 1]) given ``z``."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Samples ``[B, *shape]`` in the input's range given latent codes ``z``."""
        low, high = self.input_range
        return (low + (high - low) * torch.sigmoid(self.decode_logits(z))).view(-1, *self.shape)

    def reparameterize(self, mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (differentiable in mean and logvar)."""
        return mean + torch.exp(0.5 * logvar) * _noise(mean, generator)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(reconstruction [B, *shape], mean, logvar)`` of ``x``."""
        mean, logvar = self.encode(x)
        return self.decode(self.reparameterize(mean, logvar, generator)), mean, logvar

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``[n, *shape]`` of ``p(x | z)``'s mean with ``z ~ N(0, I)``, on the model's device."""
        parameter = next(self.parameters())
        z = _noise(parameter.new_empty(n, self.latent_dim), generator)
        return self.decode(z)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The negative ELBO of the batch ``x``: reconstruction + KL divergence, summed over the batch."""
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar, generator)
        if self.reconstruction == "bce":
            low, high = self.input_range
            target = ((x.flatten(1) - low) / (high - low)).clamp(0.0, 1.0)
            reconstruction = F.binary_cross_entropy_with_logits(self.decode_logits(z), target, reduction="sum")
        else:
            reconstruction = F.mse_loss(self.decode(z).flatten(1), x.flatten(1), reduction="sum")
        kl = 0.5 * torch.sum(-1.0 - logvar + torch.exp(logvar) + mean**2)
        return reconstruction + kl


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped as ``like``, drawn from ``generator`` (on its device) when given."""
    if generator is None:
        return torch.randn_like(like)
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)
