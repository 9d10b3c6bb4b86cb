"""maskdit: diffusion transformers with mask modeling."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # load_model imports torch: only when asked for, so `python -m maskdit --help` stays instant
    if name == "load_model":
        from maskdit.interop.convert import load_model

        return load_model
    raise AttributeError(f"module 'maskdit' has no attribute {name!r}")
