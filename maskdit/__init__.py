"""maskdit: diffusion transformers with mask modeling."""

__version__ = "0.1.0"
