"""The weight-entangled supernet of a search space (docs/METHOD.md §3), in OFA's three levels.

- Ops (`Dynamic*`): subclasses of the torch layers sized for the largest choice; a forward
  uses a slice: the first output channels, the input's channel count, a centred kernel, the
  first heads. Each op also copies its active slice into a static torch layer (`copy_to`), so
  forward and export read the same weights through the same slicing function.
- Layers: MBConv, transformer layer, MobileViT block, whose submodules carry the same names as
  the static builder's, so a static model is filled by walking both trees in parallel.
- Network (`Supernet`): `sample_active_subnet`, `set_active_subnet`, `active_arch`,
  `get_active_subnet`.

Two slices are not prefixes. The fused q/k/v projection stores rows as (q|k|v, head, dim), and
h heads take the first h heads of each of q, k and v; a prefix of the fused rows would hand
head 0's key weights to a query of another width (AutoFormer's pitfall). The MobileViT fusion
conv reads the concatenation [input, transformer output]; a width c takes the first c input
channels of each half.

The supernet stores exactly the parameters of the space's largest subnet (tested).
"""
from __future__ import annotations

import random
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from autovit.latmodel.errors import AutoVitError
from autovit.nas.arch import ArchConfig, conv_channels, expanded, mlp_hidden
from autovit.nas.builder import build_model, on_patches
from autovit.nas.space import SearchSpace


# ---- ops ---------------------------------------------------------------------------------------
class DynamicConv2d(nn.Conv2d):
    """Conv2d (no bias) holding [max_out, max_in / groups, K, K].

    `active_out` output channels (None: as many as the input, for depthwise); `active_kernel`
    a centred crop of the K x K kernel. `parts` > 1: the input is the concatenation of `parts`
    tensors of up to max_in / parts channels each, and each part takes its own first channels.
    """

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int = 1,
                 depthwise: bool = False, parts: int = 1):
        super().__init__(max_in, max_out, kernel, stride, kernel // 2,
                         groups=max_in if depthwise else 1, bias=False)
        self.depthwise, self.parts = depthwise, parts
        self.active_out: int | None = None if depthwise else max_out
        self.active_kernel = kernel

    def weight_for(self, out: int, cin: int, kernel: int) -> torch.Tensor:
        k_max = self.kernel_size[0]
        w = self.weight
        if kernel != k_max:
            off = (k_max - kernel) // 2
            w = w[:, :, off:off + kernel, off:off + kernel]
        if self.depthwise:
            return w[:out]
        if self.parts == 1:
            return w[:out, :cin]
        part, max_part = cin // self.parts, self.in_channels // self.parts
        return torch.cat([w[:out, p * max_part:p * max_part + part] for p in range(self.parts)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        out = cin if self.depthwise else self.active_out
        k = self.active_kernel
        return F.conv2d(x, self.weight_for(out, cin, k), None, self.stride, k // 2, 1,
                        cin if self.depthwise else 1)

    @torch.no_grad()
    def copy_to(self, conv: nn.Conv2d) -> None:
        conv.weight.copy_(self.weight_for(conv.out_channels, conv.in_channels, conv.kernel_size[0]))


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its weights and running statistics (C = input's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # Slices of the running buffers are views: batch_norm updates the stored statistics.
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training or not self.track_running_stats, factor, self.eps,
        )

    @torch.no_grad()
    def copy_to(self, bn: nn.BatchNorm2d) -> None:
        c = bn.num_features
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(self, name)[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)


class DynamicLinear(nn.Linear):
    """Linear over the input's features and the first `active_out` outputs."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__(max_in, max_out, bias)
        self.active_out = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.active_out
        return F.linear(x, self.weight[:out, :x.shape[-1]], None if self.bias is None else self.bias[:out])

    @torch.no_grad()
    def copy_to(self, lin: nn.Linear) -> None:
        lin.weight.copy_(self.weight[:lin.out_features, :lin.in_features])
        if lin.bias is not None:
            lin.bias.copy_(self.bias[:lin.out_features])


class DynamicQKV(nn.Linear):
    """The fused q/k/v projection, rows laid out (q|k|v, head, head_dim); `active_heads` heads
    take the first heads of each of q, k and v."""

    def __init__(self, max_dim: int, max_heads: int, head_dim: int):
        super().__init__(max_dim, 3 * max_heads * head_dim)
        self.head_dim, self.max_heads = head_dim, max_heads
        self.active_heads = max_heads

    def params_for(self, heads: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, a_max = heads * self.head_dim, self.max_heads * self.head_dim
        w = self.weight.view(3, a_max, self.in_features)[:, :a, :dim].reshape(3 * a, dim)
        b = self.bias.view(3, a_max)[:, :a].reshape(3 * a)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.params_for(self.active_heads, x.shape[-1]))

    @torch.no_grad()
    def copy_to(self, lin: nn.Linear) -> None:
        w, b = self.params_for(lin.out_features // (3 * self.head_dim), lin.in_features)
        lin.weight.copy_(w)
        lin.bias.copy_(b)


class DynamicLayerNorm(nn.LayerNorm):
    """LayerNorm over the input's last dimension, using the first weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        return F.layer_norm(x, (d,), self.weight[:d], self.bias[:d], self.eps)

    @torch.no_grad()
    def copy_to(self, ln: nn.LayerNorm) -> None:
        d = ln.normalized_shape[0]
        ln.weight.copy_(self.weight[:d])
        ln.bias.copy_(self.bias[:d])


# ---- layers ------------------------------------------------------------------------------------
class DynamicConvBNAct(nn.Sequential):
    """Conv + BN + optional SiLU; indices 0/1/2 as the static ConvBNAct's."""

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int = 1, depthwise: bool = False,
                 act: bool = True, parts: int = 1):
        super().__init__(
            DynamicConv2d(max_in, max_out, kernel, stride, depthwise, parts),
            DynamicBatchNorm2d(max_out),
            nn.SiLU() if act else nn.Identity(),
        )

    def set_active(self, out: int | None = None, kernel: int | None = None) -> None:
        conv = self[0]
        if out is not None:
            conv.active_out = out
        if kernel is not None:
            conv.active_kernel = kernel


class DynamicMBConv(nn.Module):
    """Inverted residual with elastic output width, kernel (centre crop) and expansion."""

    def __init__(self, max_in: int, max_out: int, stride: int, kernels: tuple[int, ...],
                 expansions: tuple[float, ...]):
        super().__init__()
        self.stride = stride
        max_hidden = max(expanded(max_in, e) for e in expansions)
        k = max(kernels)
        self.expand = DynamicConvBNAct(max_in, max_hidden, 1) if any(e != 1 for e in expansions) else None
        self.dw = DynamicConvBNAct(max_hidden, max_hidden, k, stride, depthwise=True)
        self.project = DynamicConvBNAct(max_hidden, max_out, 1, act=False)
        self.active_expansion = max(expansions)

    def set_active(self, out: int, kernel: int, expansion: float) -> None:
        self.project.set_active(out=out)
        self.dw.set_active(kernel=kernel)
        self.active_expansion = expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        h = x
        if self.active_expansion != 1:
            self.expand.set_active(out=expanded(cin, self.active_expansion))
            h = self.expand(x)
        y = self.project(self.dw(h))
        return x + y if self.stride == 1 and cin == y.shape[1] else y


class DynamicAttention(nn.Module):
    def __init__(self, max_dim: int, max_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.qkv = DynamicQKV(max_dim, max_heads, head_dim)
        self.proj = DynamicLinear(max_heads * head_dim, max_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        heads = self.qkv.active_heads
        self.proj.active_out = d
        qkv = self.qkv(x).reshape(b, n, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, heads * self.head_dim))


class DynamicMlp(nn.Module):
    def __init__(self, max_dim: int, max_hidden: int):
        super().__init__()
        self.fc1 = DynamicLinear(max_dim, max_hidden)
        self.act = nn.SiLU()
        self.fc2 = DynamicLinear(max_hidden, max_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc2.active_out = x.shape[-1]
        return self.fc2(self.act(self.fc1(x)))


class DynamicTransformerLayer(nn.Module):
    def __init__(self, max_dim: int, max_heads: int, head_dim: int, max_hidden: int):
        super().__init__()
        self.norm1 = DynamicLayerNorm(max_dim)
        self.attn = DynamicAttention(max_dim, max_heads, head_dim)
        self.norm2 = DynamicLayerNorm(max_dim)
        self.mlp = DynamicMlp(max_dim, max_hidden)

    def set_active(self, heads: int, hidden: int) -> None:
        self.attn.qkv.active_heads = heads
        self.mlp.fc1.active_out = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DynamicMobileViTBlock(nn.Module):
    """MobileViT block with elastic conv channels, transformer width and depth (first L layers)."""

    def __init__(self, max_channels: int, max_width: int, max_depth: int, max_heads: int, head_dim: int,
                 max_hidden: int, patch: int, kernel: int, local_conv: str, fusion_kernel: int):
        super().__init__()
        self.patch = patch
        self.local = DynamicConvBNAct(max_channels, max_channels, kernel, depthwise=local_conv == "depthwise")
        self.to_tokens = DynamicConv2d(max_channels, max_width, 1)
        self.transformer = nn.ModuleList(
            DynamicTransformerLayer(max_width, max_heads, head_dim, max_hidden) for _ in range(max_depth))
        self.norm = DynamicLayerNorm(max_width)
        self.from_tokens = DynamicConvBNAct(max_width, max_channels, 1)
        self.fuse = DynamicConvBNAct(2 * max_channels, max_channels, fusion_kernel, parts=2)
        self.active_depth = max_depth

    def set_active(self, width: int, channels: int, layers) -> None:
        for conv in (self.local, self.from_tokens, self.fuse):
            conv.set_active(out=channels)
        self.to_tokens.active_out = width
        self.active_depth = len(layers)
        for block, layer in zip(self.transformer, layers):
            block.set_active(layer.heads, mlp_hidden(width, layer.mlp_ratio))

    def _transform(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.transformer[:self.active_depth]:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = on_patches(self.to_tokens(self.local(x)), self.patch, self._transform)
        return self.fuse(torch.cat([x, self.from_tokens(y)], dim=1))


# ---- network -----------------------------------------------------------------------------------
class Supernet(nn.Module):
    """Every subnet of `space` in one set of weights (the largest subnet's)."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        sp = space
        self.stem = DynamicConvBNAct(3, max(sp.stem_widths), sp.stem_kernel, sp.stem_stride)
        c = max(sp.stem_widths)
        self.mbconv = nn.ModuleList()
        for st in sp.mbconv:
            blocks = nn.ModuleList()
            for i in range(max(st.depths)):
                blocks.append(DynamicMBConv(c, max(st.widths), st.stride if i == 0 else 1, st.kernels, st.expansions))
                c = max(st.widths)
            self.mbconv.append(blocks)
        self.downsample = nn.ModuleList()
        self.mobilevit = nn.ModuleList()
        for st in sp.transformer:
            w = max(st.widths)
            cw = conv_channels(w, sp.conv_ratio)
            self.downsample.append(DynamicMBConv(c, cw, st.stride, (sp.conv_kernel,), (sp.downsample_expansion,)))
            self.mobilevit.append(DynamicMobileViTBlock(
                cw, w, max(st.depths), max(st.heads), sp.head_dim, mlp_hidden(w, max(st.mlp_ratios)),
                sp.patch, sp.conv_kernel, sp.local_conv, sp.fusion_kernel))
            c = cw
        last = max(conv_channels(max(sp.transformer[n - 1].widths), sp.conv_ratio) for n in sp.num_transformer_stages)
        self.head_conv = DynamicConvBNAct(last, last * sp.head_expansion, 1)
        self.classifier = DynamicLinear(last * sp.head_expansion, sp.num_classes)
        self._arch: ArchConfig | None = None
        self.set_active_subnet(sp.largest())

    # ---- API ---------------------------------------------------------------------------------
    def zero_init_residual(self) -> None:
        """Zero the last weights of every residual branch (the projection BatchNorm scale of
        each MBConv after the first of its stage, the attention projection and MLP output of
        each transformer layer), so that every residual block starts as the identity and a
        deep subnet first trains as a shallow one (Goyal et al. 2017's zero-gamma; SkipInit).
        Branches without a skip connection (a stage's first MBConv, the downsampling MBConvs)
        keep their initialisation. For fresh training only: a checkpoint overwrites it."""
        with torch.no_grad():
            for blocks in self.mbconv:
                for blk in blocks[1:]:
                    blk.project[1].weight.zero_()
            for layer in (lay for block in self.mobilevit for lay in block.transformer):
                for linear in (layer.attn.proj, layer.mlp.fc2):
                    linear.weight.zero_()
                    linear.bias.zero_()

    def set_active_subnet(self, arch: ArchConfig) -> ArchConfig:
        """Activate `arch` (checked against the space; its class count follows the supernet's)."""
        arch = replace(arch, num_classes=self.space.num_classes, space=self.space.ident)
        self.space.check(arch)
        self.stem.set_active(out=arch.stem_width)
        for blocks, st in zip(self.mbconv, arch.mbconv):
            for blk in blocks[:st.depth]:
                blk.set_active(st.width, st.kernel, st.expansion)
        for i, st in enumerate(arch.transformer):
            channels = conv_channels(st.width, arch.conv_ratio)
            self.downsample[i].set_active(channels, self.space.conv_kernel, self.space.downsample_expansion)
            self.mobilevit[i].set_active(st.width, channels, st.layers)
        self.head_conv.set_active(out=conv_channels(arch.transformer[-1].width, arch.conv_ratio) * self.space.head_expansion)
        self._arch = arch
        return arch

    def sample_active_subnet(self, rng: random.Random | int | None = None) -> ArchConfig:
        """Draw an architecture uniformly from the space and activate it."""
        return self.set_active_subnet(self.space.sample(rng))

    def active_arch(self) -> ArchConfig:
        assert self._arch is not None
        return self._arch

    def _active_blocks(self) -> list[nn.Module]:
        arch = self.active_arch()
        out: list[nn.Module] = []
        for blocks, st in zip(self.mbconv, arch.mbconv):
            out.extend(blocks[:st.depth])
        for i in range(arch.num_transformer_stages):
            out += [self.downsample[i], self.mobilevit[i]]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the active subnet; x is used at the size given (callers resize to the
        active resolution)."""
        x = self.stem(x)
        for blk in self._active_blocks():
            x = blk(x)
        return self.classifier(self.head_conv(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def get_active_subnet(self) -> nn.Module:
        """The static AutoViT model of the active architecture with the supernet's weights
        (a copy: training it does not touch the supernet). Same train/eval mode as the supernet."""
        static = build_model(self.active_arch())
        _copy_tree(self.stem, static.stem)
        blocks = self._active_blocks()
        if len(blocks) != len(static.stages):
            raise AssertionError("supernet and builder disagree on the block list")
        for dyn, st in zip(blocks, static.stages):
            _copy_tree(dyn, st)
        _copy_tree(self.head_conv, static.head_conv)
        _copy_tree(self.classifier, static.classifier)
        return static.train(self.training)


def _copy_tree(dyn: nn.Module, static: nn.Module) -> None:
    """Fill `static` from the dynamic module of the same layout (children matched by name;
    a static child with no parameters or buffers, such as Identity, is skipped)."""
    if hasattr(dyn, "copy_to"):
        dyn.copy_to(static)
        return
    for name, child in static.named_children():
        if next(child.parameters(), None) is None and next(child.buffers(), None) is None:
            continue
        sub = getattr(dyn, name) if not name.isdigit() else dyn[int(name)]
        if sub is None:
            raise AutoVitError(f"supernet has no '{name}' for the static layer {type(child).__name__}")
        _copy_tree(sub, child)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> int:
    """Reset every BatchNorm's running statistics to the exact average over `batches`
    (image tensors already at the model's resolution). Returns the number of batches used.

    Momentum None makes torch keep a cumulative average: every batch weighs the same. The
    model ends in eval mode; momenta are restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    if n == 0:
        raise AutoVitError("BatchNorm recalibration got no batches: the training set is empty")
    return n
