"""AutoViT's presets as timm models: after `import autovit.nas`,
`timm.create_model("autovit_xxs", num_classes=10)` builds the XXS preset (random weights; no
AutoViT weights are published). The `autovit:` source of `autovit-lat` builds the same presets
(nas/latency.py)."""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from autovit.latmodel.errors import AutoVitError
from autovit.nas.builder import AutoViT, build_model
from autovit.nas.presets import PRESETS, load_preset


def _cfg(name: str) -> dict[str, Any]:
    side = load_preset(name).resolution
    return {"url": "", "num_classes": 1000, "input_size": (3, side, side), "first_conv": "stem.0",
            "classifier": "classifier", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


# timm reads a model's default configuration from its module's `default_cfgs` at registration.
default_cfgs = {f"autovit_{p}": _cfg(p) for p in PRESETS}


def preset_model(name: str, pretrained: bool = False, num_classes: int | None = None, in_chans: int = 3,
                 **kwargs: Any) -> AutoViT:
    """The static network of preset `name` (xxs, xs, s), as timm's factories are called."""
    for unused in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # what timm.create_model passes to all
        kwargs.pop(unused, None)
    if kwargs:
        raise TypeError(f"autovit_{name}: unexpected arguments {', '.join(sorted(kwargs))} (takes num_classes)")
    if pretrained:
        raise AutoVitError(f"autovit_{name}: no pretrained AutoViT weights are published; "
                           "use pretrained=False and train (autovit-nas train)")
    if in_chans != 3:
        raise AutoVitError(f"autovit_{name}: the presets take RGB images (in_chans=3), got {in_chans}")
    arch = load_preset(name)
    model = build_model(arch if num_classes is None else arch.with_num_classes(num_classes))
    model.pretrained_cfg = model.default_cfg = {**default_cfgs[f"autovit_{name}"], "architecture": f"autovit_{name}",
                                                "num_classes": model.arch.num_classes}
    return model


@register_model
def autovit_xxs(pretrained: bool = False, **kwargs: Any) -> AutoViT:
    return preset_model("xxs", pretrained, **kwargs)


@register_model
def autovit_xs(pretrained: bool = False, **kwargs: Any) -> AutoViT:
    return preset_model("xs", pretrained, **kwargs)


@register_model
def autovit_s(pretrained: bool = False, **kwargs: Any) -> AutoViT:
    return preset_model("s", pretrained, **kwargs)
