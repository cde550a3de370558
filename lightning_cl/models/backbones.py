"""Reference convolutional backbones, with the sizes used in the continual-learning literature.

Each exposes ``features(x)`` (the penultimate features, ``[B, D]``) and a linear ``classifier``,
and ``forward(x) = classifier(features(x))``: distillation methods read both, and a dynamic head
replaces the classifier (``model.classifier = IncrementalClassifier(D)``).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from lightning_cl.models.incremental import _check_positive_int


def _simple_cnn_stage(in_channels: int, out_channels: int) -> list[nn.Module]:
    """``conv3x3(padding 1) relu conv3x3(no padding) relu maxpool dropout``: a stage of ``SimpleCNN``."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=0),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Dropout(p=0.25),
    ]


class SimpleCNN(nn.Module):
    """The small CNN of Avalanche (``avalanche.models.SimpleCNN``), for 3-channel images such as CIFAR.

    ``conv(3->32) relu conv(32->32) relu maxpool dropout conv(32->64) relu conv(64->64) relu
    maxpool dropout conv1x1(64->64) relu adaptive-max-pool dropout``, then ``Linear(64, num_classes)``;
    dropout probability 0.25, as in Avalanche. The module layout of ``features`` matches Avalanche
    (plus a final ``Flatten``); the classifier is a plain ``Linear`` (``classifier.weight``, where
    Avalanche has ``classifier.0.weight``). Inputs of any size from 10x10 work (adaptive pooling);
    70,378 parameters with 10 classes.

    Args:
        num_classes: number of outputs.

    Raises:
        ValueError: if ``num_classes`` is not a positive integer.

    Example:
        >>> import torch
        >>> model = SimpleCNN(num_classes=10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape, model.features(torch.zeros(2, 3, 32, 32)).shape
        (torch.Size([2, 10]), torch.Size([2, 64]))
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        self.features = nn.Sequential(
            *_simple_cnn_stage(3, 32),
            *_simple_cnn_stage(32, 64),
            nn.Conv2d(64, 64, kernel_size=1, padding=0),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(1),
            nn.Dropout(p=0.25),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class _BasicBlock(nn.Module):
    """The ResNet basic block with a projection shortcut (1x1 conv + BN) when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SlimResNet18(nn.Module):
    """The reduced ResNet-18 of the GEM paper, for 3x32x32 inputs.

    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017: a
    ResNet-18 (four stages of two basic blocks, strides 1, 2, 2, 2) with ``nf``, ``2 nf``,
    ``4 nf``, ``8 nf`` filters (``nf=20`` instead of 64), average pooling, then
    ``Linear(8 nf, num_classes)``. The same network as Avalanche's ``SlimResNet18`` (whose
    classifier is named ``linear``): with ``nf=20``, 1,094,750 parameters with 10 classes (the
    1.09M usually quoted) and 1,109,240 with 100. Flattened inputs ``[B, 3072]`` are reshaped to ``[B, 3, 32, 32]``,
    as in the GEM code.

    Args:
        num_classes: number of outputs.
        nf: filters of the first stage.

    Raises:
        ValueError: if ``num_classes`` or ``nf`` is not a positive integer.

    Example:
        >>> import torch
        >>> model = SlimResNet18(num_classes=100)
        >>> model(torch.zeros(2, 3, 32, 32)).shape, model.features(torch.zeros(2, 3, 32, 32)).shape
        (torch.Size([2, 100]), torch.Size([2, 160]))
    """

    def __init__(self, num_classes: int, nf: int = 20) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("nf", nf)
        self.conv1 = _conv3x3(3, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        stages = []
        in_planes = nf
        for planes, stride in ((nf, 1), (2 * nf, 2), (4 * nf, 2), (8 * nf, 2)):
            stages.append(nn.Sequential(_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(8 * nf, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate features ``[B, 8 nf]``."""
        if x.dim() == 2:
            x = x.view(len(x), 3, 32, 32)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # equals the GEM code's avg_pool2d(out, 4) on 32x32 inputs (4x4 maps), and other sizes work
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _CifarBlock(nn.Module):
    """The basic block of the CIFAR ResNets, with the parameter-free shortcut ("option A")."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, last: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes
        self.last = last

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.stride != 1 or self.pad:
            # option A: subsample, then pad the new channels with zeros (half before, half after)
            shortcut = F.pad(
                x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)
            )
        out = out + shortcut
        return out if self.last else F.relu(out)


class ResNet32(nn.Module):
    """The CIFAR ResNet-32 used by iCaRL, for 3x32x32 inputs.

    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the CIFAR
    variant, 6n+2 layers with n=5), as used by Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL:
    Incremental Classifier and Representation Learning", CVPR 2017: a 3x3 convolution with 16
    filters, then 3 stages of 5 basic blocks with 16, 32 and 64 channels (strides 1, 2, 2),
    parameter-free shortcuts (option A: subsample and zero-pad), global average pooling and
    ``Linear(64, num_classes)``. As in iCaRL's network (Avalanche's ``IcarlNet``) the last block
    has no final ReLU, so the features can be negative. 464,154 parameters with 10 classes
    (0.46M, as published by He et al.); 470,004 with 100. Convolutions are initialised with
    Kaiming-normal (fan-out).

    Args:
        num_classes: number of outputs.

    Raises:
        ValueError: if ``num_classes`` is not a positive integer.

    Example:
        >>> import torch
        >>> model = ResNet32(num_classes=10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape, model.features(torch.zeros(2, 3, 32, 32)).shape
        (torch.Size([2, 10]), torch.Size([2, 64]))
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [_CifarBlock(in_planes, planes, stride)]
            blocks += [_CifarBlock(planes, planes, last=planes == 64 and i == 3) for i in range(4)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.stage1, self.stage2, self.stage3 = stages
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        """The penultimate features ``[B, 64]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stage3(self.stage2(self.stage1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
