"""A fast subset of bench/reproduce.py: three experiments in 1-epoch versions, on real MNIST.

The thresholds sit below what the full runs reach (bench/reproduce.py, README "Results"): the
1-epoch versions measured 0.977 (SI, task-incremental SplitMNIST), 0.859 (LFL, lowest
experience of PermutedMNIST) and 0.884 (MIR, online SplitMNIST, whose protocol is one pass).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lightning_cl.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from reproduce import CONFIGS, EXPERIMENTS, GPU_CONFIGS  # noqa: E402


@pytest.mark.parametrize(
    ("name", "flags", "threshold"),
    [
        ("si-smnist", ["--trainer.max_epochs=1"], 0.96),
        ("lfl-pmnist", ["--trainer.max_epochs=1"], 0.84),
        ("mir-smnist", [], 0.85),
    ],
)
def test_one_epoch_reproduction(
    name: str, flags: list[str], threshold: float, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").symlink_to(mnist_root)  # the configs read `root: data`
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(CONFIGS / f"{name}.yaml"), *flags])
    R = cli.result.accuracy_matrix
    score = float(R[-1].min()) if EXPERIMENTS[name].every_experience else cli.result.average_accuracy
    assert score >= threshold, (name, score)


def test_every_experiment_has_a_config_that_parses() -> None:
    configs = sorted([*CONFIGS.glob("*.yaml"), *GPU_CONFIGS.glob("*.yaml")])
    assert sorted(p.stem for p in configs) == sorted(EXPERIMENTS)
    for path in configs:  # the GPU ones too, though this machine cannot run them
        with pytest.raises(SystemExit) as printed:
            run_cli(["fit", "--config", str(path), "--print_config"])
        assert printed.value.code == 0
