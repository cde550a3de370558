"""A fast subset of bench/reproduce.py: three experiments in 1-epoch versions, on real MNIST.

The thresholds sit below what the full runs reach (bench/reproduce.py, README "Results"): the
1-epoch versions measured 0.977 (SI, task-incremental SplitMNIST), 0.859 (LFL, lowest
experience of PermutedMNIST) and 0.884 (MIR, online SplitMNIST, whose protocol is one pass).
"""

from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from lightning_cl.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from _cifar import stage_cifar10_standin  # noqa: E402
from reproduce import CONFIGS, EXPERIMENTS, GPU_CONFIGS  # noqa: E402

from lightning_cl.benchmarks import SplitCIFAR10  # noqa: E402


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


def test_cifar10_standin_holds_the_real_jpeg_images(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bench/reproduce.py --cifar10-standin: the CIFAR configs run on these files
    archive = shared_data / "CIFAR10" / "cifar10_test_jpg.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    cls = torchvision.datasets.CIFAR10
    for name in ("train_list", "test_list", "meta"):  # the stand-in points them at its own files
        monkeypatch.setattr(cls, name, getattr(cls, name))
    root = stage_cifar10_standin(shared_data, train_per_class=800)
    try:
        stream = SplitCIFAR10(root, num_experiences=5, class_order=range(10), download=False)
        assert [len(e) for e in stream.train_stream] == [1600] * 5
        assert [len(e) for e in stream.test_stream] == [400] * 5
        # the first training image of class 3 ("cat") is cat/0000.jpg, and the first test one cat/0800.jpg
        train = cls(str(root), train=True)
        test = cls(str(root), train=False)
        with zipfile.ZipFile(archive) as zf:
            for dataset, file in ((train, "cat/0000.jpg"), (test, "cat/0800.jpg")):
                expected = np.asarray(Image.open(io.BytesIO(zf.read(f"cifar10_test_jpg/{file}"))).convert("RGB"))
                first = dataset.targets.index(3)
                assert np.array_equal(dataset.data[first], expected)
    finally:
        shutil.rmtree(root)
