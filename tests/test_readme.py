"""The README's claims that can run here: its two commands and its CL-method example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lightning_cl import ContinualModule
from tests.conftest import REPO, TinyClassifier, make_tensor_stream, quiet_trainer

README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None and README.index(first_block.group(0)) < README.index("## ")
    commands = first_block.group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("lightning-cl fit") and commands[1].endswith("pytest")
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_the_cl_method_example_runs_and_anchors_the_weights() -> None:
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "class L2Anchor" in b)
    namespace: dict = {}
    exec(block, namespace)
    last_rows = []
    for strength in (0.0, 0.5):
        torch.manual_seed(0)
        dm, model = make_tensor_stream(3), ContinualModule(TinyClassifier(in_features=8, num_classes=6))
        trainer = quiet_trainer(max_epochs=3, callbacks=[namespace["L2Anchor"](strength)])
        for _ in range(dm.num_experiences):
            trainer.fit(model, datamodule=dm)
        anchor = float(trainer.callback_metrics["train/anchor_loss"])
        assert anchor == 0.0 if strength == 0 else anchor > 0.1
        trainer.test(model, datamodule=dm, verbose=False)
        last_rows.append(model.accuracy_matrix[-1])
    # anchoring keeps more of the earlier experiences than plain fine-tuning
    assert float(last_rows[1][:2].mean()) > float(last_rows[0][:2].mean()) + 0.2


def test_the_reporting_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning as L

    from lightning_cl import fit_stream

    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "StreamReport()" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"L": L}
    exec(block, namespace)
    trainer = namespace["trainer"]
    model = ContinualModule(TinyClassifier(in_features=8, num_classes=6))
    result = fit_stream(trainer, model, make_tensor_stream(3))
    folder = Path(trainer.loggers[0].log_dir)
    report = json.loads((folder / "results.json").read_text())
    torch.testing.assert_close(torch.tensor(report["accuracy_matrix"], dtype=torch.float64), result.accuracy_matrix)
    assert (folder / "accuracy_matrix.png").stat().st_size > 0 and (folder / "metrics.csv").is_file()
    assert list((tmp_path / "logs" / "text").glob("version_*/log.txt"))
