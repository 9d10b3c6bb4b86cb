"""Interop: other projects' checkpoints in, diffusers out; one adapter module per external format.

* :mod:`~maskdit.interop.convert`: the entry points (``detect_format``, ``import_run``, ``check_vae_dir``,
  ``load_model``).
* :mod:`~maskdit.interop.state_dict`: what the adapters share: the ``FORMATS`` and ``EXPORTS`` registries, reading
  and checking state dicts, the DiT layout (``dit_layout``), the JSON checks, what an export cannot express.
* adapters, each opening with the format, its tensor names and what maps where: :mod:`~maskdit.interop.dit`
  (DiT and SiT), :mod:`~maskdit.interop.maskdit` (MaskDiT), :mod:`~maskdit.interop.mdt` (MDT v2),
  :mod:`~maskdit.interop.diffusers` (``DiTTransformer2DModel``: import and ``export_diffusers``),
  :mod:`~maskdit.interop.pixart` (``PixArtTransformer2DModel``), :mod:`~maskdit.interop.sd3`
  (``SD3Transformer2DModel``); the last three also export (``maskdit export --format diffusers|pixart|sd3``).

Adding a format means adding one adapter module (a converter registered with ``@FORMATS.register``) and
one import line below; nothing else lists formats. The package imports every adapter before any of its modules
runs, so ``FORMATS`` (and ``--format``) always lists them in this order.
"""

# isort: off
from maskdit.interop import dit, maskdit, mdt, diffusers, pixart, sd3  # noqa: F401  (each registers its formats)
# isort: on
