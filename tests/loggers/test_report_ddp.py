"""StreamReport and TextLogger under two processes (strategy="ddp", gloo): rank 0 alone writes and prints."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_cl import ContinualModule, fit_stream
from lightning_cl.loggers import StreamReport, TextLogger
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer, run_two_processes


def _worker(rank: int, out: str) -> None:
    root = Path(out)
    L.seed_everything(0, verbose=False)
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    loggers = [CSVLogger(root, name="csv"), TextLogger(root / f"text{rank}")]
    # a folder per rank: whatever rank 1 wrote would show
    report = StreamReport(directory=root / f"report{rank}")
    trainer = quiet_trainer(devices=2, strategy="ddp", logger=loggers, callbacks=[report])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = fit_stream(trainer, model, make_tensor_stream(num_experiences=2))
    (root / f"stdout{rank}.txt").write_text(printed.getvalue())
    torch.save(result.accuracy_matrix, root / f"R{rank}.pt")


@pytest.mark.ddp
def test_only_rank_zero_reports(tmp_path: Path) -> None:
    run_two_processes(_worker, str(tmp_path))
    R = torch.load(tmp_path / "R0.pt", weights_only=True)
    torch.testing.assert_close(R, torch.load(tmp_path / "R1.pt", weights_only=True), rtol=0, atol=0)
    assert not (tmp_path / "report1").exists() and not (tmp_path / "text1").exists()
    data = json.loads((tmp_path / "report0" / "results.json").read_text())
    torch.testing.assert_close(torch.tensor(data["accuracy_matrix"], dtype=torch.float64), R)
    assert data["config"]["trainer"]["world_size"] == 2 and data["finished"]
    assert (tmp_path / "report0" / "accuracy_matrix.png").is_file()
    text = (tmp_path / "text0" / "text" / "version_0" / "log.txt").read_text()
    assert text.count("-- stream/accuracy_matrix_table") == 2
    # "average accuracy" appears once in either summary form (rich table or plain text)
    assert (tmp_path / "stdout0.txt").read_text().lower().count("average accuracy") == 1
    assert (tmp_path / "stdout1.txt").read_text() == ""
