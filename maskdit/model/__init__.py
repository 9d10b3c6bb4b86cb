"""Model components: the DiT backbone and its blocks."""

from maskdit.model.dit import PRESETS, DiT, build_model, preset

__all__ = ["DiT", "PRESETS", "build_model", "preset"]
