"""The command line: the quickstart, a user's own model class, the module entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_cl import StreamResult
from lightning_cl.cli import run_cli

QUIET = ["--trainer.logger=false", "--trainer.enable_checkpointing=false"]


def test_quickstart_runs_the_whole_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level("INFO")
    cli = run_cli(["fit", "--trainer.max_epochs=2", *QUIET])
    result = cli.result
    assert isinstance(result, StreamResult)
    assert result.accuracy_matrix.shape == (5, 5)
    assert result.forward_transfer is not None
    assert "Accuracy matrix" in caplog.text and "average accuracy" in caplog.text


def test_a_user_model_class_from_the_python_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "usermodels.py").write_text(
        textwrap.dedent(
            """
            import lightning as L, torch
            from torch.nn import functional as F

            class Net(L.LightningModule):
                def __init__(self, hidden: int = 16):
                    super().__init__()
                    nn = torch.nn
                    self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
                def forward(self, x):
                    return self.net(x)
                def training_step(self, batch, batch_idx):
                    return F.cross_entropy(self(batch[0]), batch[1])
                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=0.1)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        [
            "fit",
            "--model=usermodels.Net",
            "--model.hidden=8",
            "--data.num_experiences=2",
            "--trainer.max_epochs=1",
            "--evaluate_initial=false",
            *QUIET,
        ]
    )
    assert type(cli.model.module).__name__ == "Net" and cli.model.module.net[1].out_features == 8
    assert cli.result.accuracy_matrix.shape == (2, 2)
    assert cli.result.forward_transfer is None


def test_module_entry_point_prints_the_config(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_cl", "fit", "--print_config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "lightning_cl.benchmarks.SplitDigits" in out.stdout and "lightning_cl.models.Classifier" in out.stdout


def test_console_script_exits_zero(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "lightning-cl"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_cl"]
    out = subprocess.run(
        [*command, "fit", "--trainer.max_epochs=1", *QUIET], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "average accuracy" in out.stdout + out.stderr and "ContinualCLI object" not in out.stdout
