"""Diffusion: objectives, samplers, guidance, tasks, accelerators and quantisation."""

from maskdit.diffusion import masked  # noqa: F401  (registers the masked-diffusion samplers)
