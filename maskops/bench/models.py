"""The deployment study's models: ResNet-50 and VGG-16 built here (the standard ImageNet
layouts), or torchvision:<name> / timm:<name>; random weights."""
from __future__ import annotations

from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(width, cout, 1))
        self.shortcut = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return (self.body(x) + self.shortcut(x)).relu_()


def resnet50(num_classes: int = 1000) -> nn.Module:
    layers = [*_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * Bottleneck.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


VGG16_CHANNELS = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool",
                  512, 512, 512, "pool", 512, 512, 512, "pool")


def vgg16(num_classes: int = 1000) -> nn.Module:
    layers, cin = [], 3
    for channels in VGG16_CHANNELS:
        if channels == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU(inplace=True)]
            cin = channels
    layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(),
               nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
               nn.Linear(4096, num_classes)]
    return nn.Sequential(*layers)


MODELS = {"resnet50": resnet50, "vgg16": vgg16}


def build(spec: str, num_classes: int = 1000) -> nn.Module:
    """A built-in model by name, or one from torchvision:<name> / timm:<name>."""
    if spec in MODELS:
        return MODELS[spec](num_classes=num_classes)
    if ":" not in spec:
        raise ValueError(f"--model is one of {sorted(MODELS)}, torchvision:<name> or timm:<name>; "
                         f"got {spec!r}")
    from maskops.thirdparty import create_model
    return create_model(spec, num_classes)
