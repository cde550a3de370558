"""Reference backbones: sizes from the literature, features + classifier, dynamic heads on top."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_cl import Experience
from lightning_cl.models.backbones import ResNet32, SimpleCNN, SlimResNet18
from lightning_cl.models.incremental import IncrementalClassifier


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("build", "features", "expected"),
    [
        # by hand: convs 896 + 9248 + 18496 + 36928 + 4160, classifier 650 (Avalanche's SimpleCNN)
        (lambda: SimpleCNN(10), 64, 70_378),
        # the GEM paper's reduced ResNet-18 (nf=20): the 1.09M usually quoted; by hand
        # 2724 nf^2 + 177 nf for the convolutions, BatchNorms and projections, (8 nf + 1) C for the classifier
        (lambda: SlimResNet18(10), 160, 1_094_750),
        (lambda: SlimResNet18(100), 160, 1_109_240),
        (lambda: SlimResNet18(10, nf=8), 64, 176_402),
        # CIFAR ResNet-32 with option-A shortcuts: 0.46M (He et al. 2016, Table 6)
        (lambda: ResNet32(10), 64, 464_154),
        (lambda: ResNet32(100), 64, 470_004),
    ],
    ids=["simplecnn", "slimresnet18-10", "slimresnet18-100", "slimresnet18-nf8", "resnet32-10", "resnet32-100"],
)
def test_sizes_and_shapes(build: Any, features: int, expected: int) -> None:
    torch.manual_seed(0)
    model = build().eval()
    assert num_parameters(model) == expected
    assert model.classifier.in_features == features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.features(x).shape == (2, features)
        out = model(x)
        assert out.shape == (2, model.classifier.out_features)
        torch.testing.assert_close(out, model.classifier(model.features(x)))


def test_resnet32_shortcuts_have_no_parameters_and_its_features_are_not_rectified() -> None:
    torch.manual_seed(0)
    model = ResNet32(10).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(m.kernel_size == (3, 3) for m in convs)  # 1 + 3 x 5 x 2: no 1x1 projection
    with torch.no_grad():
        assert float(model.features(torch.randn(2, 3, 16, 16)).min()) < 0  # iCaRL's last block has no ReLU


def test_slim_resnet18_reads_flattened_images_as_the_gem_code_does() -> None:
    torch.manual_seed(0)
    model = SlimResNet18(5).eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x.flatten(1)), model(x))


@pytest.mark.parametrize("build", [lambda: SimpleCNN(4), lambda: SlimResNet18(4, nf=4), lambda: ResNet32(4)])
def test_a_dynamic_head_replaces_the_classifier(build: Any) -> None:
    torch.manual_seed(0)
    model = build()
    model.classifier = IncrementalClassifier(model.classifier.in_features)
    model.classifier.adaptation(Experience(0, [0], classes_in_this_experience=(0, 1, 2)))
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])  # small images: adaptive pooling takes them
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert model(x).shape == (3, 3)
    assert all(p.grad is not None for p in model.parameters())  # every layer is trained through the head


@pytest.mark.parametrize("build", [lambda: SimpleCNN(3), lambda: SlimResNet18(3, nf=4), lambda: ResNet32(3)])
def test_state_dict_round_trip(build: Any) -> None:
    torch.manual_seed(0)
    model = build()
    model(torch.randn(2, 3, 16, 16))  # moves the BatchNorm statistics away from their defaults
    torch.manual_seed(1)
    other = build()
    other.load_state_dict(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SimpleCNN(0), r"`num_classes`: expected a positive integer, got 0"),
        (lambda: SlimResNet18(10, nf=0), r"`nf`: expected a positive integer, got 0"),
        (lambda: SlimResNet18(2.5), r"`num_classes`: expected a positive integer, got 2\.5"),
        (lambda: ResNet32(-1), r"`num_classes`: expected a positive integer, got -1"),
    ],
)
def test_bad_arguments(build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_mlp_activations_and_bad_activation() -> None:
    from lightning_cl.models import MLP

    tanh = MLP(4, 3, hidden_sizes=(5,), activation="tanh")
    assert any(isinstance(m, torch.nn.Tanh) for m in tanh.modules())
    with pytest.raises(ValueError, match="activation"):
        MLP(4, 3, activation="gelu6")


def test_multihead_mlp_trains_task_incremental_through_classifier() -> None:
    from lightning_cl import ContinualModule, fit_stream
    from lightning_cl.benchmarks import SplitDigits
    from lightning_cl.models import Classifier, MultiHeadMLP
    from tests.conftest import quiet_trainer

    torch.manual_seed(0)
    dm = SplitDigits(num_experiences=5, task_labels=True, class_order=list(range(10)))
    model = ContinualModule(Classifier(MultiHeadMLP(64, hidden_sizes=(32,)), lr=0.1))
    result = fit_stream(quiet_trainer(max_epochs=2), model, dm)
    # one 2-way head per task: every task stays well above chance (0.5) after the stream
    assert float(result.accuracy_matrix[-1].min()) > 0.8
    assert sorted(model.module.backbone.classifier.heads) == ["0", "1", "2", "3", "4"]
