"""Interop: other projects' checkpoints in, diffusers out; one adapter module per external format.

* :mod:`~maskdit.interop.convert`: the entry points (``detect_format``, ``import_run``, ``check_vae_dir``,
  ``load_model``); it imports every adapter, so that each registers itself in ``FORMATS``.
* :mod:`~maskdit.interop.state_dict`: what the adapters share: the ``FORMATS`` registry, reading and
  checking state dicts, the DiT layout (``dit_layout``), the JSON checks.
* adapters, each opening with the format, its tensor names and what maps where: :mod:`~maskdit.interop.dit`
  (DiT and SiT), :mod:`~maskdit.interop.maskdit` (MaskDiT), :mod:`~maskdit.interop.mdt` (MDT v2),
  :mod:`~maskdit.interop.diffusers` (``DiTTransformer2DModel``: import and ``export_diffusers``).

Adding a format means adding one adapter module (a converter registered with ``@FORMATS.register``) and
one import line in ``convert.py``; nothing else lists formats.
"""
