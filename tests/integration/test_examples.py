"""Every script of examples/ runs in its smoke mode (one batch per experience), in this process."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.test_configs import restore_process_state  # noqa: F401 - a fixture

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
# what each example prints in smoke mode beyond the accuracy table
EXPECTED = {
    "combine_methods.py": "Replay + EWC",
    "custom_dataset_stream.py": "classes per experience: [(",
    "custom_method.py": "anchored tensors (saved in checkpoints): 4",
    "log_to_tensorboard_or_wandb.py": "logged to",
    "multi_gpu_ddp.py": "1 process(es)",
    "online_stream.py": "5 optimizer steps, 5 mini-experiences",
    "task_incremental_multihead.py": "outputs per task head: {'0': 2, '1': 2, '2': 2, '3': 2, '4': 2}",
    "wrap_existing_module.py": "weights loaded into a bare DigitClassifier",
}


def run_example(script: Path, *args: str) -> None:
    saved = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved


def test_every_example_is_listed_and_short() -> None:
    assert {p.name for p in EXAMPLES} == set(EXPECTED)
    assert {p.name: len(p.read_text().splitlines()) for p in EXAMPLES if len(p.read_text().splitlines()) > 80} == {}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_in_smoke_mode(
    script: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_process_state: None,  # noqa: F811 - the DDP example leaves a (one-process) process group
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_CL_SMOKE", "1")
    run_example(script)
    out = capsys.readouterr().out
    assert "Accuracy matrix" in out or "average accuracy" in out
    assert EXPECTED[script.name] in out
    assert not list(tmp_path.glob("lightning_logs")), "an example left Lightning's default logs behind"
    if script.name == "log_to_tensorboard_or_wandb.py":  # TensorBoard by default
        files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
        assert {"results.json", "accuracy_matrix.png"} <= files
        assert any(name.startswith("events.out.tfevents") for name in files)


def test_smoke_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTNING_CL_SMOKE", raising=False)
    run_example(REPO / "examples" / "online_stream.py", "--smoke")
    assert "5 optimizer steps" in capsys.readouterr().out


def test_logging_example_with_wandb_offline(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_process_state: None,  # noqa: F811
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    run_example(
        REPO / "examples" / "log_to_tensorboard_or_wandb.py", "--smoke", "--logger", "wandb", "--save_dir", "logs"
    )
    files = {p.name for p in (tmp_path / "logs").rglob("*") if p.is_file()}
    assert {"results.json", "accuracy_matrix.png"} <= files
    assert any(name.endswith(".wandb") for name in files)  # the offline run, to `wandb sync` later
