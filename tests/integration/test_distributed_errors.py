"""fit_stream refuses the strategies CL state cannot live with, saying why and what to use instead."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lightning_cl import ContinualModule, fit_stream
from tests.conftest import TinyClassifier, make_tensor_stream, quiet_trainer


def model() -> ContinualModule:
    return ContinualModule(TinyClassifier(in_features=8, num_classes=6))


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_spawning_strategies_are_refused(strategy: str) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    with pytest.raises(ValueError) as error:
        fit_stream(trainer, model(), make_tensor_stream(2))
    message = str(error.value)
    assert message.startswith("`trainer`: strategy DDPStrategy starts its processes per call")
    assert "a second `fit` is impossible there and the CL state of the workers would be lost" in message
    assert "Use strategy='ddp' from a script" in message


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy])
def test_sharding_strategies_are_refused(monkeypatch: pytest.MonkeyPatch, strategy: type) -> None:
    trainer = quiet_trainer()
    # FSDP needs a GPU and DeepSpeed its package to be built: an unbuilt instance is enough to be refused
    monkeypatch.setattr(trainer._accelerator_connector, "strategy", strategy.__new__(strategy))
    with pytest.raises(ValueError) as error:
        fit_stream(trainer, model(), make_tensor_stream(2))
    message = str(error.value)
    assert message.startswith(f"`trainer`: strategy {strategy.__name__} shards the parameters across the processes")
    assert "FSDP, DeepSpeed and model-parallel strategies are not supported. Use strategy='ddp'" in message
