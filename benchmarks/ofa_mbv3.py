"""OFA MobileNetV3 subnets (supernet `ofa_mbv3_d234_e346_k357_w1.2`) built from (resolution, ks, e, d).

Written from the published layout (Cai et al., "Once-for-All", ICLR 2020, and the layout its
repository documents for OFAMobileNetV3): base widths [16, 16, 24, 40, 80, 112, 160, 960, 1280]
times 1.2 rounded by OFA's make_divisible(8); five elastic stages of up to four MBConv blocks
with strides [2, 2, 2, 1, 2], activations [relu, relu, h_swish, h_swish, h_swish] and
squeeze-excite in stages [no, yes, no, yes, yes]; a 3x3 stride-2 stem with h_swish, a fixed
first block (depthwise 3x3, expansion 1, relu), a 1x1 final expansion, global pooling, a 1x1
feature-mix conv and the classifier. Weights are random: only the shapes matter for latency.

`ops="ofa"` (the default) writes the element-wise parts as OFA's own modules do
(`ofa/utils/pytorch_modules.py`, the code HELP's repository ships with its OFA latencies): h_swish
is `x * relu6(x + 3) / 6` and h_sigmoid `relu6(x + 3) / 6` (four and three eager kernels, not one),
the squeeze-excite and the global pooling average with `x.mean(3).mean(2)` (two reductions), and
the squeeze-excite convolutions have a bias. `ops="torch"` uses torch's fused modules
(nn.Hardswish, nn.Hardsigmoid, one mean): the same network as one kernel per activation, the
benchmark's graphs before this was known (kept for the ablation in docs/BENCHMARKS.md).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

BASE_WIDTHS = [16, 16, 24, 40, 80, 112, 160, 960, 1280]
STRIDES = [2, 2, 2, 1, 2]
ACTS = ["relu", "relu", "h_swish", "h_swish", "h_swish"]
SE = [False, True, False, True, True]
WIDTH_MULT = 1.2
SLOTS_PER_STAGE = 4
OPS_FORMS = ("ofa", "torch")


def make_divisible(v: float, divisor: int = 8) -> int:
    """OFA/MobileNet rounding: nearest multiple of `divisor`, never more than 10 % below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class OFAHswish(nn.Module):
    """OFA's h_swish as written in its code: four element-wise ops."""

    def forward(self, x):
        return x * F.relu6(x + 3.0) / 6.0


class OFAHsigmoid(nn.Module):
    """OFA's h_sigmoid as written in its code: three element-wise ops."""

    def forward(self, x):
        return F.relu6(x + 3.0) / 6.0


def _act(name: str, ops: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    return OFAHswish() if ops == "ofa" else nn.Hardswish(inplace=True)


def _spatial_mean(x, ops: str):
    return x.mean(3, keepdim=True).mean(2, keepdim=True) if ops == "ofa" else x.mean((2, 3), keepdim=True)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, ops: str):
        super().__init__()
        mid = make_divisible(channels // 4)
        self.ops = ops
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = OFAHsigmoid() if ops == "ofa" else nn.Hardsigmoid(inplace=True)

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(_spatial_mean(x, self.ops)))))


class MBBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: float, act: str, se: bool, ops: str):
        super().__init__()
        hidden = make_divisible(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), _act(act, ops)]
        else:
            hidden = cin
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), _act(act, ops)]
        if se:
            layers.append(SqueezeExcite(hidden, ops))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class OFAMobileNetV3(nn.Module):
    def __init__(self, ks: list[int], e: list[int], d: list[int], num_classes: int = 1000, ops: str = "ofa"):
        super().__init__()
        if len(ks) != 20 or len(e) != 20 or len(d) != 5:
            raise ValueError("OFA MobileNetV3 needs 20 kernel sizes, 20 expand ratios and 5 depths")
        if ops not in OPS_FORMS:
            raise ValueError(f"ops must be one of {OPS_FORMS}, got {ops!r}")
        self.ops = ops
        widths = [make_divisible(w * WIDTH_MULT) for w in BASE_WIDTHS]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  _act("h_swish", ops))
        blocks: list[nn.Module] = [MBBlock(widths[0], widths[1], 3, 1, 1, "relu", False, ops)]
        cin = widths[1]
        for s in range(5):
            cout = widths[2 + s]
            for j in range(d[s]):
                slot = s * SLOTS_PER_STAGE + j
                blocks.append(MBBlock(cin, cout, ks[slot], STRIDES[s] if j == 0 else 1, e[slot], ACTS[s], SE[s], ops))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = nn.Sequential(nn.Conv2d(cin, widths[7], 1, bias=False), nn.BatchNorm2d(widths[7]),
                                          _act("h_swish", ops))
        self.feature_mix = nn.Sequential(nn.Conv2d(widths[7], widths[8], 1, bias=False), _act("h_swish", ops))
        self.classifier = nn.Linear(widths[8], num_classes)

    def forward(self, x):
        x = self.final_expand(self.blocks(self.stem(x)))
        x = self.feature_mix(_spatial_mean(x, self.ops))
        return self.classifier(x.flatten(1))


def parse_row(ks: str, e: str, d: str) -> tuple[list[int], list[int], list[int]]:
    """The HELP CSV stores the lists as space-separated integers."""
    return [int(x) for x in ks.split()], [int(x) for x in e.split()], [int(x) for x in d.split()]


def _code_steps(op, shape) -> list[tuple[str, list[str], dict]] | None:
    """(op type, inputs, attributes) that OFA's code runs for `op` of the torch form, the last one
    writing op's output; None where the two forms agree. `@k` names the k-th step's output."""
    x = op.inputs[0]
    if op.op_type == "HardSwish":  # x * relu6(x + 3) / 6
        return [("Add", [x, "ofa_3"], {}), ("Clip", ["@0", "ofa_0", "ofa_6"], {}), ("Mul", [x, "@1"], {}),
                ("Div", ["@2", "ofa_6"], {})]
    if op.op_type == "HardSigmoid":  # relu6(x + 3) / 6
        return [("Add", [x, "ofa_3"], {}), ("Clip", ["@0", "ofa_0", "ofa_6"], {}), ("Div", ["@1", "ofa_6"], {})]
    if op.op_type == "ReduceMean" and sorted(op.attrs.get("axes", [])) == [2, 3] and len(shape or ()) == 4:
        return [("ReduceMean", [x], {"axes": [3], "keepdims": 1}), ("ReduceMean", ["@0"], {"axes": [2], "keepdims": 1})]
    return None


def ofa_code_graph(g):
    """The OpGraph of the "ofa" form from a graph exported in the "torch" form: each HardSwish,
    HardSigmoid and mean over (H, W) replaced by the ops OFA's code runs (see the module doc), as
    an export of the "ofa" form holds them, without another export."""
    import copy

    import networkx as nx
    import numpy as np
    import onnx

    from autovit.latmodel.graph import OpNode, TensorInfo

    out = copy.deepcopy(g)
    for name, value in (("ofa_0", 0.0), ("ofa_3", 3.0), ("ofa_6", 6.0)):
        out.tensors[name] = TensorInfo(name, (), onnx.TensorProto.FLOAT, "static", np.array(value, np.float32))
    ops, order = [], []
    for name in g.order:
        op = g.op(name)
        steps = _code_steps(op, g.tensors[op.inputs[0]].shape)
        if steps is None:
            ops.append(op)
            continue
        for i, (op_type, ins, attrs) in enumerate(steps):
            last = i == len(steps) - 1
            res = op.outputs[0] if last else f"{name}/ofa{i}"
            if not last:
                src = out.tensors[op.inputs[0]]
                shape = src.shape[:3] + (1,) if op_type == "ReduceMean" else src.shape
                out.tensors[res] = TensorInfo(res, shape, src.elem_type, "activation")
            ins = [f"{name}/ofa{int(t[1:])}" if t.startswith("@") else t for t in ins]
            ops.append(OpNode(f"{name}/ofa{i}", op_type, ins, [res], attrs))
    graph, producer = nx.DiGraph(), {}
    for op in ops:
        graph.add_node(op.name, op=op)
        order.append(op.name)
        graph.add_edges_from((producer[i], op.name) for i in op.inputs if i in producer)
        producer.update({o: op.name for o in op.outputs})
    out.graph, out.order = graph, order
    return out
