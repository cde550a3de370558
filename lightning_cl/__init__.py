"""lightning_cl: continual learning inside PyTorch Lightning."""

from lightning_cl.core import (
    ContinualCallback,
    ContinualModule,
    Experience,
    Stream,
    StreamDataModule,
    StreamResult,
    fit_stream,
)

__version__ = "0.1.0"

__all__ = [
    "ContinualCallback",
    "ContinualModule",
    "Experience",
    "Stream",
    "StreamDataModule",
    "StreamResult",
    "__version__",
    "fit_stream",
]
