"""Datasets, codecs, latent stores and media files: what flows into training and out of sampling.

Importing the package registers every dataset: the image sets in :mod:`~maskdit.data.datasets`, the embedded
videos in :mod:`~maskdit.data.video`, the captioned shapes in :mod:`~maskdit.data.shapes` and VAE latent stores in
:mod:`~maskdit.data.latents`, token stores in :mod:`~maskdit.data.tokens`, human motion in
:mod:`~maskdit.data.motion` (with footstep sounds in :mod:`~maskdit.data.footsteps`), 3-D shapes in
:mod:`~maskdit.data.voxels`, spoken digits in :mod:`~maskdit.data.audio`, expert action chunks in
:mod:`~maskdit.data.actions` and character sequences in :mod:`~maskdit.data.text`.
"""

from maskdit.data import (  # noqa: F401  (their entries)
    actions,
    audio,
    footsteps,
    latents,
    motion,
    shapes,
    text,
    tokens,
    video,
    voxels,
)
