"""Diffusion: objectives, samplers, guidance, tasks, accelerators and quantisation."""
