"""N-BCBL: the DCASE 2024 Task 1 baseline (a simplified CP-Mobile, no GRN) with N base channels.

Follows CPJKU/dcase2024_task1_baseline models/net.py layer for layer, so that torchinfo gives the published
complexity: 32-BCBL at 256 x 65 -> 61,148 params / 29,419,156 MACs; 24-BCBL at 256 x 89 -> 35,062 / 22,649,568.
"""

from __future__ import annotations

import torch
from torch import nn

from asc_ray.schema import Float, Int, Section, trains


class BcblSettings(Section):
    """Config section `bcbl:` (configs/full.yaml): how the N-BCBL models train."""

    epochs: Int = trains(ge=1)
    batch_size: Int = trains(ge=1)
    lr: Float = trains(gt=0)
    weight_decay: Float = trains(ge=0)
    warmup_steps: Int = trains(ge=0)
    roll_s: Float = trains(ge=0)


# --- architecture (the baseline's defaults) ---
CHANNELS_MULTIPLIER = 1.8
EXPANSION_RATE = 2.1
N_BLOCKS = (3, 2, 1)
# block name (numbered over all stages) -> stride (freq, time); every other block has stride 1
STRIDES = {"b2": (1, 1), "b3": (1, 2), "b4": (2, 1)}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to a multiple of `divisor`, never more than 10 % below v (MobileNet convention)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn(
    c_in: int, c_out: int, kernel: int = 3, stride=1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv (no bias: BN follows) + BN (+ ReLU), 'same' padding; what torchvision's Conv2dNormActivation builds."""
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Block(nn.Module):
    """Inverted bottleneck: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, expansion_rate: float, stride=(1, 1)):
        super().__init__()
        c_exp = make_divisible(c_in * expansion_rate, 8)
        self.block = nn.Sequential(
            conv_bn(c_in, c_exp, kernel=1),
            conv_bn(c_exp, c_exp, kernel=3, stride=stride, groups=c_exp),
            conv_bn(c_exp, c_out, kernel=1, relu=False),
        )
        self.use_shortcut = c_in == c_out
        if tuple(stride) == (1, 1):
            self.shortcut = nn.Identity()
        else:  # a strided residual needs the input pooled to the same size (parameter-free)
            self.shortcut = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
        self.after_block_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_shortcut:
            out = out + self.shortcut(x)
        return self.after_block_activation(out)


def initialize_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class BCBL(nn.Module):
    def __init__(
        self,
        base_channels: int = 32,
        n_classes: int = 10,
        in_channels: int = 1,
        channels_multiplier: float = CHANNELS_MULTIPLIER,
        expansion_rate: float = EXPANSION_RATE,
        n_blocks: tuple[int, ...] = N_BLOCKS,
        strides: dict | None = None,
    ):
        super().__init__()
        strides = STRIDES if strides is None else strides
        base = make_divisible(base_channels, 8)
        channels = [base] + [make_divisible(base * channels_multiplier**s, 8) for s in range(len(n_blocks))]
        # stem: two strided 3x3 convs, 1 -> N/4 -> N
        self.in_c = nn.Sequential(
            conv_bn(in_channels, channels[0] // 4, kernel=3, stride=2),
            conv_bn(channels[0] // 4, channels[0], kernel=3, stride=2),
        )
        self.stages = nn.Sequential()
        block_id = 0
        for s, n in enumerate(n_blocks):
            stage = nn.Sequential()
            c_in = channels[s]
            for _ in range(n):
                block_id += 1
                name = f"b{block_id}"
                stage.add_module(
                    name, Block(c_in, channels[s + 1], expansion_rate, strides.get(name, (1, 1)))
                )
                c_in = channels[s + 1]
            self.stages.add_module(f"s{s + 1}", stage)
        # head: 1x1 conv to classes, BN, global average pool (no linear layer)
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels[-1], n_classes, kernel_size=1, bias=False),
            nn.BatchNorm2d(n_classes),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.apply(initialize_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.in_c(x))
        return self.feed_forward(x).flatten(1)  # [B, n_classes, 1, 1] -> [B, n_classes]


def bcbl(base_channels: int, n_classes: int = 10) -> nn.Module:
    """N-BCBL; input [B, 1, n_mels, T] log-mel -> logits [B, n_classes]."""
    return BCBL(base_channels=base_channels, n_classes=n_classes)
