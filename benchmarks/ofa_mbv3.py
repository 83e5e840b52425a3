"""OFA MobileNetV3 subnets (supernet `ofa_mbv3_d234_e346_k357_w1.2`) built from (resolution, ks, e, d).

Written from the published layout (Cai et al., "Once-for-All", ICLR 2020, and the layout its
repository documents for OFAMobileNetV3): base widths [16, 16, 24, 40, 80, 112, 160, 960, 1280]
times 1.2 rounded by OFA's make_divisible(8); five elastic stages of up to four MBConv blocks
with strides [2, 2, 2, 1, 2], activations [relu, relu, h_swish, h_swish, h_swish] and
squeeze-excite in stages [no, yes, no, yes, yes]; a 3x3 stride-2 stem with h_swish, a fixed
first block (depthwise 3x3, expansion 1, relu), a 1x1 final expansion, global pooling, a 1x1
feature-mix conv and the classifier. Weights are random: only the shapes matter for latency.
"""
from __future__ import annotations

from torch import nn

BASE_WIDTHS = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
STRIDES = [2, 2, 2, 1, 2]
ACTS = ["relu", "relu", "h_swish", "h_swish", "h_swish"]
SE = [False, True, False, True, True]
WIDTH_MULT = 1.2
SLOTS_PER_STAGE = 4


def make_divisible(v: float, divisor: int = 8) -> int:
    """OFA/MobileNet rounding: nearest multiple of `divisor`, never more than 10 % below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _act(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Hardswish(inplace=True)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        mid = make_divisible(channels // 4)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(mid, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MBBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: float, act: str, se: bool):
        super().__init__()
        hidden = make_divisible(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), _act(act)]
        else:
            hidden = cin
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), _act(act)]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class OFAMobileNetV3(nn.Module):
    def __init__(self, ks: list[int], e: list[int], d: list[int], num_classes: int = 1000):
        super().__init__()
        if len(ks) != 20 or len(e) != 20 or len(d) != 5:
            raise ValueError("OFA MobileNetV3 needs 20 kernel sizes, 20 expand ratios and 5 depths")
        widths = [make_divisible(w * WIDTH_MULT) for w in BASE_WIDTHS]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.Hardswish(inplace=True))
        blocks: list[nn.Module] = [MBBlock(widths[0], widths[1], 3, 1, 1, "relu", False)]
        cin = widths[1]
        for s in range(5):
            cout = widths[2 + s]
            for j in range(d[s]):
                slot = s * SLOTS_PER_STAGE + j
                blocks.append(MBBlock(cin, cout, ks[slot], STRIDES[s] if j == 0 else 1, e[slot], ACTS[s], SE[s]))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = nn.Sequential(nn.Conv2d(cin, widths[7], 1, bias=False), nn.BatchNorm2d(widths[7]),
                                          nn.Hardswish(inplace=True))
        self.feature_mix = nn.Sequential(nn.Conv2d(widths[7], widths[8], 1, bias=False), nn.Hardswish(inplace=True))
        self.classifier = nn.Linear(widths[8], num_classes)

    def forward(self, x):
        x = self.final_expand(self.blocks(self.stem(x)))
        x = self.feature_mix(x.mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))


def parse_row(ks: str, e: str, d: str) -> tuple[list[int], list[int], list[int]]:
    """The HELP CSV stores the lists as space-separated integers."""
    return [int(x) for x in ks.split()], [int(x) for x in e.split()], [int(x) for x in d.split()]
