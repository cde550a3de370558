"""The command line: ``lightning-cl fit`` runs a whole stream through LightningCLI.

``lightning-cl fit`` with no arguments runs the quickstart: an MLP on the embedded
``SplitDigits`` (5 experiences), printing the accuracy matrix and the stream metrics.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple, instantiate_class
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer

# imported for their classes' short names on the command line (--data=SplitMNIST, --trainer.callbacks+=EWC)
import lightning_cl.benchmarks
import lightning_cl.callbacks
import lightning_cl.models  # noqa: F401
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


class ExperienceOptimizers:
    """A ``configure_optimizers`` that builds the CLI's ``--optimizer`` (and ``--lr_scheduler``) anew per call.

    Lightning calls ``configure_optimizers`` at every ``fit``, i.e. at every experience, after
    the model was adapted (grown heads): each experience therefore gets a fresh optimizer over the
    parameters the model has *now*, and a fresh schedule. (LightningCLI's own ``--optimizer``
    builds ONE optimizer when the CLI starts and returns that object at every fit: its parameter
    list goes stale as heads grow and its state leaks from one experience into the next.)

    Args:
        module: the user's LightningModule whose parameters are optimised.
        optimizer: ``{"class_path": ..., "init_args": {...}}`` of a ``torch.optim.Optimizer``.
        lr_scheduler: the same for a learning-rate scheduler, or None.

    Example:
        >>> from lightning_cl.models import MLP, Classifier
        >>> model = Classifier(MLP(4, 2, hidden_sizes=()))
        >>> make = ExperienceOptimizers(model, {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}})
        >>> first, second = make(), make()
        >>> type(first).__name__, first is second, first.param_groups[0]["lr"]
        ('Adam', False, 0.01)
    """

    def __init__(
        self, module: L.LightningModule, optimizer: dict[str, Any], lr_scheduler: dict[str, Any] | None = None
    ) -> None:
        for name, value in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
            if value is not None and not (isinstance(value, dict) and isinstance(value.get("class_path"), str)):
                raise TypeError(f"`{name}`: expected a dict with a 'class_path' (and 'init_args'), got {value!r}.")
        self.module = module
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def __call__(self) -> Any:
        optimizer = instantiate_class(self.module.parameters(), self.optimizer)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = instantiate_class(optimizer, self.lr_scheduler)
        return LightningCLI.configure_optimizers(self.module, optimizer, scheduler)


def stream_num_classes(datamodule: StreamDataModule) -> int:
    """``datamodule.num_classes``, preparing (downloading) the data first if it cannot be told without it.

    The benchmarks of this package know their classes without reading any file. A datamodule that
    reads its data to count them is prepared here, when the CLI builds the model, in the process
    that parses the command line (under ``strategy="ddp"`` that is rank 0, before it starts the
    other processes).
    """
    try:
        return datamodule.num_classes
    except OSError:
        datamodule.prepare_data()
        return datamodule.num_classes


def _build_datamodule(config: Any) -> StreamDataModule:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(StreamDataModule, "data", fail_untyped=False)
    parsed = parser.parse_object({"data": config})
    # `instantiate` replaced `instantiate_classes` in jsonargparse 4.49
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parsed).data


def _as_dict(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Namespace) else value


def _takes(cls: Any, name: str) -> bool:
    """Whether ``cls(...)`` has a parameter ``name`` (by name; ``**kwargs`` does not count)."""
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


class ContinualCLI(LightningCLI):
    """LightningCLI whose ``fit`` runs the whole stream (``fit`` + ``test`` per experience).

    * ``--model`` takes any LightningModule class path (the user's own, importable from the
      ``PYTHONPATH``); it is wrapped in :class:`~lightning_cl.ContinualModule`. A model that
      is not a LightningModule, or has no ``forward`` / ``training_step``, is an argument error.
    * ``--data`` takes any :class:`~lightning_cl.StreamDataModule`.
    * Without ``--model`` (or ``--data``, on the command line or in a config) the quickstart's is
      used (:data:`QUICKSTART_DEFAULTS`, see :func:`with_quickstart`). They are not parser
      defaults: jsonargparse would hand a default class's arguments (``lr``, ``batch_size``, ...)
      to any class the user picks that also takes them.
    * Trainer defaults: ``max_epochs=5`` (the budget of EACH experience), no progress bar, no
      model summary.
    * CL methods are callbacks: ``trainer.callbacks`` (``callbacks+:`` in a YAML file, or
      ``--trainer.callbacks+=EWC`` on the command line, appends, so method configs combine).
    * Optimizers are created fresh at every experience: by the module's own
      ``configure_optimizers`` (e.g. from an ``OptimizerCallable`` init argument), or from
      ``--optimizer`` / ``--lr_scheduler``, which the CLI instantiates anew at each experience
      (:class:`ExperienceOptimizers`; it replaces the module's ``configure_optimizers``, with a
      warning when the module defines one). LightningCLI's automatic optimizer, ONE object
      reused by every fit, is not used (``auto_configure_optimizers`` must stay False).
    * ``num_classes`` of the datamodule is passed to the model when the model takes a
      ``num_classes`` argument, or else to its ``backbone`` when that takes one (it overrides a
      value given in the config: the data decides how many outputs are needed), unless
      ``--backbone_num_classes=false`` (an embedding of another size, e.g. for CoPE).
    * ``fit --ckpt_path X`` resumes the stream from any checkpoint of it; ``test --ckpt_path X``
      evaluates a checkpoint on the whole test stream and prints its accuracy row.
    * ``--evaluate_initial`` tests the untrained model first (forward transfer);
      ``--keep_optimizer_state`` and ``--log_loss_on_step`` are ContinualModule's options.
    * The config is saved once, next to the logs, at the first trainer call of the run (the
      initial test or the first fit); later fits do not write it again.

    After ``fit`` the :class:`~lightning_cl.StreamResult` is ``cli.result``; after ``test`` the
    accuracy row is ``cli.test_accuracy``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("auto_configure_optimizers"):
            raise ValueError(
                "`auto_configure_optimizers`: ContinualCLI creates optimizers per experience itself "
                "(--optimizer / --lr_scheduler); LightningCLI's automatic optimizer is one object reused "
                "by every fit. Leave it False."
            )
        kwargs["auto_configure_optimizers"] = False
        kwargs.setdefault("datamodule_class", StreamDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        self.result: Any = None
        self.test_accuracy: torch.Tensor | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--evaluate_initial", type=bool, default=True, help="Test the untrained model first (forward transfer)."
        )
        parser.add_argument(
            "--keep_optimizer_state",
            type=bool,
            default=False,
            help="Carry optimizer state (e.g. Adam moments) of unchanged parameters into the next experience.",
        )
        parser.add_argument("--log_loss_on_step", type=bool, default=False, help="Also log train/loss every step.")
        parser.add_argument(
            "--backbone_num_classes",
            type=bool,
            default=True,
            help="Give the backbone the datamodule's num_classes (false for an embedding of another size, e.g. CoPE).",
        )
        # registered as "AUTOMATIC" so LightningCLI links them nowhere; `after_instantiate_classes`
        # turns them into a configure_optimizers that builds new objects at every experience
        parser.add_optimizer_args((Optimizer,), nested_key="optimizer")
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple, nested_key="lr_scheduler")
        # a model taking `num_classes` gets the datamodule's (a property, known once it is built);
        # a model without that argument is left alone by jsonargparse
        parser.link_arguments(
            "data", "model.init_args.num_classes", compute_fn=stream_num_classes, apply_on="instantiate"
        )
        # only the trainer's: a default model or data class would leak its init_args into the
        # class a user picks (jsonargparse keeps those the new class accepts, e.g. `lr`)
        parser.set_defaults({"trainer": QUICKSTART_DEFAULTS["trainer"]})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
            return
        argv = with_quickstart(list(sys.argv[1:] if args is None else args), self.subcommands())
        if args is not None:
            super().parse_arguments(parser, argv)  # keeps LightningCLI's warning on mixed arguments
        else:
            self.config = parser.parse_args(argv)

    def _section(self, config: Namespace) -> Namespace:
        return config[self.subcommand] if self.subcommand else config

    def before_instantiate_classes(self) -> None:
        section = self._section(self.config)
        model = section.get("model")
        init = model.get("init_args") if isinstance(model, Namespace) else None
        if not isinstance(init, Namespace) or "num_classes" in init:
            return  # the model's own `num_classes` is linked (add_arguments_to_parser)
        backbone = init.get("backbone")
        backbone_init = backbone.get("init_args") if isinstance(backbone, Namespace) else None
        if (
            isinstance(backbone_init, Namespace)
            and "num_classes" in backbone_init
            and section.get("backbone_num_classes")
        ):
            # Written into the config (so the saved config.yaml shows it) from a datamodule built
            # for the purpose: an instantiation link into `backbone` would fail LightningCLI's
            # bookkeeping of the model's hyperparameters whenever num_classes is its only argument.
            backbone_init.num_classes = stream_num_classes(_build_datamodule(section.get("data")))

    def after_instantiate_classes(self) -> None:
        config = self._section(self.config_init)
        parser = self._parser(self.subcommand)
        if isinstance(self.model, ContinualModule):
            module = self.model.module
        else:
            module = self.model
            _drop_linked_num_classes(module)
            try:
                self.model = ContinualModule(
                    module,
                    log_loss_on_step=bool(config.get("log_loss_on_step", False)),
                    keep_optimizer_state=bool(config.get("keep_optimizer_state", False)),
                )
            except TypeError as error:
                parser.error(f"Configuration check failed: model: {error}")
        optimizer, lr_scheduler = _as_dict(config.get("optimizer")), _as_dict(config.get("lr_scheduler"))
        if optimizer is None:
            if lr_scheduler is not None:
                parser.error("Configuration check failed: lr_scheduler: it needs an --optimizer to schedule.")
            if not is_overridden("configure_optimizers", module):
                parser.error(
                    f"Configuration check failed: optimizer: {type(module).__name__} defines no configure_optimizers; "
                    "give one on the command line, e.g. --optimizer=SGD --optimizer.lr=0.1."
                )
            return
        if is_overridden("configure_optimizers", module):
            rank_zero_warn(
                f"`{type(module).__name__}.configure_optimizers` is replaced by the CLI's --optimizer"
                f"{' and --lr_scheduler' if lr_scheduler is not None else ''} (created anew at every experience)."
            )
        # an instance attribute: ContinualModule calls the wrapped module's configure_optimizers per fit
        module.configure_optimizers = ExperienceOptimizers(module, optimizer, lr_scheduler)  # type: ignore[method-assign]

    def fit(self, model: Any, datamodule: Any = None, ckpt_path: str | Path | None = None, **_: Any) -> None:
        """Run the whole stream; print the accuracy matrix and the stream metrics."""
        config = self._section(self.config)
        result = fit_stream(
            self.trainer,
            self.model,
            self.datamodule,
            evaluate_initial=bool(config.get("evaluate_initial", True)),
            ckpt_path=ckpt_path,
        )
        self.result = result
        rank_zero_info(result.table())

    def test(
        self, model: Any, datamodule: Any = None, ckpt_path: str | Path | None = None, verbose: bool = True, **_: Any
    ) -> None:
        """Evaluate the model (a checkpoint's with ``--ckpt_path``) on every test experience; print the row.

        The row is ``test/acc_exp{j}`` as logged, whatever the checkpoint's position in the stream.
        """
        dm = self.datamodule
        self.trainer.test(self.model, datamodule=dm, ckpt_path=ckpt_path, verbose=False)
        metrics = self.trainer.callback_metrics
        row = torch.tensor([float(metrics[f"test/acc_exp{j}"]) for j in range(len(dm.test_stream))])
        self.test_accuracy = row
        header = "".join(f"{'exp ' + str(j):>9}" for j in range(len(row)))
        rank_zero_info(
            f"Test stream accuracy ({_position(dm, ckpt_path)})\n"
            f"{'':<10}{header}{'mean':>9}\n"
            f"{'accuracy':<10}{''.join(f'{v:9.4f}' for v in row.tolist())}{row.mean().item():9.4f}"
        )


def _position(dm: StreamDataModule, ckpt_path: str | Path | None) -> str:
    """Where in the stream the evaluated weights are, from the datamodule's restored state."""
    if ckpt_path is None:
        return "untrained model"
    state = dm.state_dict()
    done = int(state.get("next", 0))
    if state.get("active"):  # written at an epoch end of experience `done`, maybe its last one
        where = f"in experience {done} of {dm.num_experiences}"
    else:
        where = f"after experience {done - 1} of {dm.num_experiences}" if done else "untrained"
    return f"{where}, {ckpt_path}"


def _given_in_config(value: str, key: str, subcommands: Iterable[str]) -> bool:
    path = Path(value)
    try:
        loaded = yaml.safe_load(path.read_text() if path.is_file() else value)
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(loaded, dict):
        return False
    sections = [loaded] + [loaded[name] for name in subcommands if isinstance(loaded.get(name), dict)]
    return any(key in section for section in sections)


def _selects(argv: list[str], key: str, subcommands: Iterable[str]) -> bool:
    """Whether ``argv`` picks the class of ``key``: ``--key=...``, ``--key.class_path=...`` or a config with ``key``."""
    flag = f"--{key}"
    for i, arg in enumerate(argv):
        if arg == flag or arg.startswith((flag + "=", flag + ".class_path")):
            return True
        if arg in ("-c", "--config") and i + 1 < len(argv):
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            continue
        if _given_in_config(config, key, subcommands):
            return True
    return False


def with_quickstart(argv: list[str], subcommands: Iterable[str]) -> list[str]:
    """``argv`` with the quickstart's model and data inserted after the subcommand where it picks none.

    They come first, so ``--model.lr=0.05`` or ``--data.num_experiences=2`` still change the
    quickstart's; a run that names its own class never sees the quickstart's arguments.

    Example:
        >>> with_quickstart(["fit", "--model=my.Net"], ["fit", "test"])[:3]  # doctest: +ELLIPSIS
        ['fit', '--data={"class_path": "lightning_cl.benchmarks.SplitDigits", ...}', '--model=my.Net']
    """
    names = list(subcommands)
    position = next((i for i, arg in enumerate(argv) if arg in names), None)
    if position is None:
        return argv
    inserted = [
        f"--{key}={json.dumps(QUICKSTART_DEFAULTS[key])}" for key in ("model", "data") if not _selects(argv, key, names)
    ]
    return argv[: position + 1] + inserted + argv[position + 1 :]


def _drop_linked_num_classes(module: L.LightningModule) -> None:
    # LightningCLI records every applied link in the hyperparameters of the module it builds,
    # even when the class has no such argument; left there, `load_from_checkpoint` and
    # `--ckpt_path` would pass `num_classes` to a class that does not take it
    hparams = module.hparams
    if "_class_path" in hparams and "num_classes" in hparams and not _takes(type(module), "num_classes"):
        del hparams["num_classes"]


def run_cli(args: list[str] | None = None) -> ContinualCLI:
    """Run the command line with ``args`` (``sys.argv`` when None) and return the CLI object."""
    return ContinualCLI(args=args)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-cl`` and ``python -m lightning_cl`` (exit status 0 on success)."""
    run_cli(args)
