"""AutoViT's NAS engine. Importing it registers AutoViT with the latency toolkit (its block
kinds, the `autovit:` and architecture-file sources) and its presets with timm."""
from autovit.nas import blocks as _blocks, latency as _latency, timm_models as _timm_models  # noqa: F401 - registrations
