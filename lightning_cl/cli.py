"""The command line: ``lightning-cl fit`` runs a whole stream through LightningCLI.

``lightning-cl fit`` with no arguments runs the quickstart: an MLP on the embedded
``SplitDigits`` (5 experiences), printing the accuracy matrix and the stream metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_cl.core.datamodule import StreamDataModule
from lightning_cl.core.module import ContinualModule
from lightning_cl.core.runner import fit_stream

QUICKSTART_DEFAULTS: dict[str, Any] = {
    "model": {
        "class_path": "lightning_cl.models.Classifier",
        "init_args": {
            "backbone": {
                "class_path": "lightning_cl.models.MLP",
                "init_args": {"in_features": 64, "num_classes": 10, "hidden_sizes": [100, 100]},
            },
            "lr": 0.1,
        },
    },
    "data": {"class_path": "lightning_cl.benchmarks.SplitDigits", "init_args": {"num_experiences": 5}},
    "trainer": {"max_epochs": 5, "enable_model_summary": False, "enable_progress_bar": False},
}


class ContinualCLI(LightningCLI):
    """LightningCLI whose ``fit`` runs the whole stream (``fit`` + ``test`` per experience).

    ``--model`` takes any LightningModule class path (wrapped in ContinualModule), ``--data`` any
    StreamDataModule, CL methods go under ``trainer.callbacks``. Optimizers come from each module's
    own ``configure_optimizers``, so they are created fresh at every experience.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("datamodule_class", StreamDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        # LightningCLI's automatic optimizer is ONE object reused by every fit: stale for grown
        # heads and carrying state across experiences
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--evaluate_initial", type=bool, default=True, help="Test the untrained model first (forward transfer)."
        )
        parser.set_defaults(QUICKSTART_DEFAULTS)

    def after_instantiate_classes(self) -> None:
        if not isinstance(self.model, ContinualModule):
            self.model = ContinualModule(self.model)

    def fit(self, model: Any, datamodule: Any = None, ckpt_path: str | Path | None = None, **_: Any) -> None:
        """Run the whole stream; print the accuracy matrix and the stream metrics."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        result = fit_stream(
            self.trainer,
            self.model,
            self.datamodule,
            evaluate_initial=bool(config.get("evaluate_initial", True)),
            ckpt_path=ckpt_path,
        )
        self.result = result
        rank_zero_info(result.table())


def run_cli(args: list[str] | None = None) -> ContinualCLI:
    """Run the command line with ``args`` (``sys.argv`` when None) and return the CLI object."""
    return ContinualCLI(args=args)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-cl`` and ``python -m lightning_cl`` (exit status 0 on success)."""
    run_cli(args)
