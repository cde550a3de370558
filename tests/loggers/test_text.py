"""TextLogger: the file it writes, alone and next to other loggers in a real stream."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric.loggers.logger import _DummyExperiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.loggers import TextLogger
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def test_one_block_per_call_with_the_step_and_every_metric(tmp_path: Path) -> None:
    logger = TextLogger(tmp_path, version=0)
    logger.log_metrics({"train/loss": torch.tensor(0.25), "epoch": 1, "tiny": 1.5e-5}, step=3)
    logger.log_metrics({"test/acc_exp0": 0.75})
    logger.log_metrics({"test/acc_exp0": 1.0})
    assert Path(logger.log_file).read_text() == (
        "-- step 3 --\n\tepoch = 1\n\ttiny = 1.5000e-05\n\ttrain/loss = 0.2500\n\n"
        "-- step 1 --\n\ttest/acc_exp0 = 0.7500\n\n"  # no step given: the number of the call
        "-- step 2 --\n\ttest/acc_exp0 = 1.0000\n\n"
    )


def test_hyperparameters_flattened_and_written_again_only_when_changed(tmp_path: Path) -> None:
    logger = TextLogger(tmp_path, version=0)
    logger.log_hyperparams({"lr": 0.1, "model": {"hidden": 32}})
    logger.log_hyperparams({"lr": 0.1, "model": {"hidden": 32}})  # a second fit of the stream
    logger.log_metrics({"x": 0.5}, step=0)
    logger.log_hyperparams({"lr": 3e-4, "model": {"hidden": 32}})
    text = Path(logger.log_file).read_text()
    assert text.count("-- hyperparameters --") == 2
    assert text.startswith("-- hyperparameters --\n\tlr = 0.1\n\tmodel/hidden = 32\n\n")
    assert text.endswith("-- hyperparameters --\n\tlr = 0.0003\n\tmodel/hidden = 32\n\n")


def test_log_text_and_failed_finalize(tmp_path: Path) -> None:
    logger = TextLogger(tmp_path, version=0)
    logger.log_text("table", "a  b\n1  2", step=4)
    logger.finalize("success")  # Lightning finalizes after every fit and test: nothing to say
    logger.finalize("failed")
    assert Path(logger.log_file).read_text() == "-- table (step 4) --\n\ta  b\n\t1  2\n\n-- run ended: failed --\n\n"


def test_folder_name_and_next_version(tmp_path: Path) -> None:
    first = TextLogger(tmp_path, name="runs")
    first.log_metrics({"x": 1.0}, step=0)
    (tmp_path / "runs" / "version_7").mkdir()
    (tmp_path / "runs" / "version_x").mkdir()  # not a version number: ignored
    second = TextLogger(str(tmp_path), name="runs")
    assert (first.name, first.version, second.version) == ("runs", 0, 8)
    assert second.log_dir == str(tmp_path / "runs" / "version_8")
    assert second.save_dir == str(tmp_path) and second.root_dir == str(tmp_path / "runs")
    named = TextLogger(tmp_path, version="final")
    assert named.log_dir == str(tmp_path / "text" / "final")
    assert Path(first.log_file) == tmp_path / "runs" / "version_0" / "log.txt"


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = TextLogger(tmp_path, version=0)
    assert isinstance(logger.experiment, _DummyExperiment)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.log_text("t", "x")
    logger.finalize("failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"save_dir": 3}, "`save_dir`: expected a str or Path, got int"),
        ({"save_dir": "x", "name": None}, "`name`: expected a str, got NoneType"),
        ({"save_dir": "x", "version": 1.5}, "`version`: expected an int, a str or None, got float"),
        ({"save_dir": "x", "version": True}, "`version`: expected an int, a str or None, got bool"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        TextLogger(**kwargs)


def test_composes_with_csv_logger_over_a_stream(tmp_path: Path) -> None:
    csv_logger, text_logger = CSVLogger(tmp_path, name="csv"), TextLogger(tmp_path)
    trainer = quiet_trainer(logger=[csv_logger, text_logger])
    dm = make_tensor_stream(num_experiences=3, seed=5)
    dm.save_hyperparameters({"stream": "blobs", "per_class": 20})
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    result = fit_stream(trainer, model, dm)
    text = Path(text_logger.log_file).read_text()
    assert (Path(csv_logger.log_dir) / "metrics.csv").is_file()
    steps = [int(s) for s in re.findall(r"^-- step (\d+) --$", text, flags=re.M)]
    assert steps == sorted(steps) and steps[-1] == trainer.global_step
    for key in ("train/loss", "user_loss", "test/acc_exp0", "test/acc_exp2", "stream/average_accuracy"):
        assert f"\t{key} = " in text
    last_block = text.rsplit("-- step", 1)[1]
    assert f"\tstream/average_accuracy = {result.average_accuracy:.4f}\n" in last_block
    assert f"\tstream/forward_transfer = {result.forward_transfer:.4f}\n" in last_block
    # the datamodule's hyperparameters (Lightning logs them at every fit) are written once
    assert text.count("-- hyperparameters --") == 1
    assert text.startswith("-- hyperparameters --\n\tper_class = 20\n\tstream = blobs\n\n")
