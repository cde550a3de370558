"""The command line: the quickstart, a user's own model class, the module entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from lightning_cl import StreamResult
from lightning_cl.cli import ContinualCLI, run_cli

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


# --------------------------------------------------------------------------------------------------
# ContinualCLI: user classes, optimizers per experience, linking, configs, checkpoints, bad input

USER_MODULE = '''
import lightning as L, torch
from torch import nn
from torch.nn import functional as F
from lightning_cl.models import IncrementalClassifier


class Linked(L.LightningModule):
    """num_classes is required: only the datamodule can give it."""
    def __init__(self, num_classes: int, lr: float = 0.001):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Growing(L.LightningModule):
    """No configure_optimizers: the CLI's --optimizer provides it; the head grows per experience."""
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = IncrementalClassifier(16, initial_out_features=2)
    def forward(self, x):
        return self.head(self.trunk(x))
    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])


class NoForward(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(64, 10)
    def training_step(self, batch, batch_idx):
        return self.net(batch[0].flatten(1)).sum()


class RecordOptimizers(L.Callback):
    """What each experience trains with: the optimizer object, its class, lr, and the parameters it holds."""
    def __init__(self):
        self.seen = []
    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        held = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        self.seen.append((id(optimizer), type(optimizer).__name__, optimizer.param_groups[0]["lr"], held,
                          sum(p.numel() for p in pl_module.parameters())))
'''
DIGITS2 = ["--data.num_experiences=2", "--data.class_order=[0,1,2,3,4,5,6,7,8,9]", "--evaluate_initial=false"]
ONE_BATCH = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_test_batches=1"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module ``usernets`` on the Python path, the working directory a fresh folder."""
    (tmp_path / "usernets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("usernets", None)
    return "usernets"


def printed_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_num_classes_comes_from_the_datamodule(user_module: str) -> None:
    cli = run_cli(["fit", "--model=usernets.Linked", *DIGITS2, *ONE_BATCH, *QUIET])
    assert cli.model.module.net[1].out_features == 10
    assert cli.model.module.hparams["num_classes"] == 10 and cli.model.module.hparams["lr"] == 0.001


def test_num_classes_of_a_backbone_comes_from_the_datamodule(user_module: str) -> None:
    cli = run_cli(["fit", "--model.backbone.num_classes=3", *DIGITS2, *ONE_BATCH, *QUIET])
    assert cli.model.module.backbone.classifier.out_features == 10
    # a model without a `num_classes` argument does not get one in its hyperparameters
    assert "num_classes" not in cli.model.module.hparams
    saved = yaml.safe_load(Path("config.yaml").read_text())  # the saved config says what ran
    assert saved["model"]["init_args"]["backbone"]["init_args"]["num_classes"] == 10


def test_quickstart_arguments_do_not_leak_into_a_user_model(
    user_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(printed_config(["fit", "--model=usernets.Linked"], capsys))
    # the quickstart's Classifier(lr=0.1) is not there to hand its lr to a class that also takes one
    assert config["model"] == {"class_path": "usernets.Linked", "init_args": {"lr": 0.001}}
    assert config["data"]["class_path"] == "lightning_cl.benchmarks.SplitDigits"  # not given: the quickstart's
    quickstart = yaml.safe_load(printed_config(["fit", "--model.lr=0.3"], capsys))
    assert quickstart["model"]["class_path"] == "lightning_cl.models.Classifier"
    assert quickstart["model"]["init_args"]["lr"] == 0.3


@pytest.mark.parametrize(
    ("args", "optimizer", "lr"),
    [
        (["--model=usernets.Growing", "--optimizer=Adam", "--optimizer.lr=0.01"], "Adam", 0.01),
        # a StepLR that decays every epoch: a schedule reused across experiences would start exp 1 at 1e-4
        (
            [
                "--model=usernets.Growing",
                "--optimizer=SGD",
                "--optimizer.lr=0.01",
                "--lr_scheduler=StepLR",
                "--lr_scheduler.step_size=1",
                "--trainer.max_epochs=2",
            ],
            "SGD",
            0.01,
        ),
        # the module's own OptimizerCallable (an init argument of Classifier)
        (["--model.optimizer=Adam", "--model.optimizer.lr=0.02"], "Adam", 0.02),
    ],
    ids=["cli-optimizer", "cli-scheduler", "module-optimizer-callable"],
)
def test_optimizers_are_created_anew_at_every_experience(
    user_module: str, args: list[str], optimizer: str, lr: float
) -> None:
    cli = run_cli(["fit", *DIGITS2, *ONE_BATCH, *args, "--trainer.callbacks=usernets.RecordOptimizers", *QUIET])
    seen = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RecordOptimizers").seen
    assert len(seen) == 2 and seen[0][0] != seen[1][0]  # one new object per experience
    assert [(name, rate) for _, name, rate, _, _ in seen] == [(optimizer, lr)] * 2
    assert all(held == total for *_, held, total in seen)  # grown heads are optimised too
    if "usernets.Growing" in args:
        assert seen[1][4] > seen[0][4]


def test_cli_optimizer_replaces_the_modules_with_a_warning(user_module: str) -> None:
    with pytest.warns(UserWarning, match="configure_optimizers` is replaced by the CLI's --optimizer"):
        cli = run_cli(["fit", "--model=usernets.Linked", "--optimizer=Adam", *DIGITS2, *ONE_BATCH, *QUIET])
    assert type(cli.trainer.optimizers[0]).__name__ == "Adam"


def test_automatic_optimizers_are_refused() -> None:
    with pytest.raises(ValueError, match="auto_configure_optimizers"):
        ContinualCLI(args=["fit"], auto_configure_optimizers=True)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--model=torch.nn.Linear"], 'key "model"'),
        (["--model=usernets.NoForward"], "forward"),
        (["--data=lightning.pytorch.demos.boring_classes.BoringDataModule"], 'key "data"'),
        (["--trainer.callbacks=EWC", "--trainer.callbacks.ewc_lamda=1"], "ewc_lamda"),
        (["--model=usernets.Growing"], "optimizer"),  # neither configure_optimizers nor --optimizer
        (["--lr_scheduler=StepLR", "--lr_scheduler.step_size=1"], "lr_scheduler"),  # nothing to schedule
    ],
    ids=[
        "model-not-a-lightningmodule",
        "model-without-forward",
        "data-not-a-stream",
        "misspelled-callback-argument",
        "no-optimizer",
        "scheduler-without-optimizer",
    ],
)
def test_bad_input_names_the_key(
    user_module: str, args: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *args, *QUIET])
    assert exit_info.value.code == 2
    assert key in capsys.readouterr().err


def test_a_callback_argument_overridden_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", str(CONFIGS / "method" / "ewc.yaml"), "--trainer.callbacks.ewc_lambda=7.5"]
    cli = run_cli([*args, *DIGITS2, *ONE_BATCH, *QUIET])
    ewc = [c for c in cli.trainer.callbacks if type(c).__name__ == "EWC"]
    assert len(ewc) == 1 and ewc[0].ewc_lambda == 7.5
    assert (
        yaml.safe_load((CONFIGS / "method" / "ewc.yaml").read_text())["trainer"]["callbacks+"][0]["init_args"][
            "ewc_lambda"
        ]
        == 1.0
    )


def test_print_config_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    pieces = ["-c", str(CONFIGS / "method" / "ewc.yaml"), "-c", str(CONFIGS / "optimizer" / "adam.yaml")]
    first = printed_config(
        ["fit", *pieces, "--trainer.callbacks.ewc_lambda=2.5", "--trainer.callbacks+=LwF", *DIGITS2], capsys
    )
    (tmp_path / "printed.yaml").write_text(first)
    assert printed_config(["fit", "-c", "printed.yaml"], capsys) == first
    cli = run_cli(["fit", "-c", "printed.yaml", *ONE_BATCH, *QUIET])
    assert [type(c).__name__ for c in cli.trainer.callbacks if type(c).__name__ in ("EWC", "LwF")] == ["EWC", "LwF"]
    assert next(c for c in cli.trainer.callbacks if type(c).__name__ == "EWC").ewc_lambda == 2.5
    assert type(cli.trainer.optimizers[0]).__name__ == "Adam"
    assert cli.result.accuracy_matrix.shape == (2, 2)


def test_config_is_saved_once_next_to_the_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "-c",
        str(CONFIGS / "trainer" / "csv.yaml"),
        "--trainer.logger.save_dir=logs",
        "--data.num_experiences=5",
        *ONE_BATCH,
        "--trainer.enable_checkpointing=false",
    ]
    run_cli(args)
    saved = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("config.yaml"))
    assert saved == ["logs/lightning_cl/version_0/config.yaml"]  # 1 initial test + 5 fits + 5 tests: one file
    config = yaml.safe_load((tmp_path / saved[0]).read_text())
    assert config["data"]["init_args"]["num_experiences"] == 5
    assert (tmp_path / "logs/lightning_cl/version_0/metrics.csv").is_file()


def test_resume_and_test_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    stream = [
        "--data.num_experiences=5",
        "--data.class_order=[0,1,2,3,4,5,6,7,8,9]",
        "--seed_everything=0",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.logger=false",
    ]
    every_experience = [
        "--trainer.callbacks=ModelCheckpoint",
        "--trainer.callbacks.dirpath=ckpts",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename={epoch}",
    ]
    full = run_cli(["fit", *stream, *every_experience, "--trainer.default_root_dir=full"]).result
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == [f"epoch={i}.ckpt" for i in range(5)]

    # a checkpoint written after experience 1: experiences 2..4 are trained, rows 0..1 come from it
    resumed = run_cli(["fit", *stream, "--ckpt_path=ckpts/epoch=1.ckpt", "--trainer.default_root_dir=resumed"]).result
    assert resumed.accuracy_matrix.shape == (5, 5)
    torch.testing.assert_close(resumed.accuracy_matrix, full.accuracy_matrix)

    caplog.set_level("INFO")
    tested = run_cli(["test", *stream, "--ckpt_path=ckpts/epoch=1.ckpt", "--trainer.default_root_dir=tested"])
    assert tested.test_accuracy is not None
    torch.testing.assert_close(tested.test_accuracy.double(), full.accuracy_matrix[1], atol=1e-6, rtol=0)
    assert "Test stream accuracy (in experience 1 of 5, ckpts/epoch=1.ckpt)" in caplog.text
    # the module's R: the tested row is row 1 (the weights trained on experience 1); row 0 is the
    # checkpoint's own, not overwritten
    R = tested.model.accuracy_matrix
    assert R.shape == (2, 5)
    torch.testing.assert_close(R[1], full.accuracy_matrix[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(R[0], full.accuracy_matrix[0], atol=1e-6, rtol=0)
