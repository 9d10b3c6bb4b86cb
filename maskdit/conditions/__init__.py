"""Conditioners: what a sample is generated *from* (class labels, captions, control images, observation vectors, sound).

Each conditioner is one module in this package that registers a
:class:`~maskdit.conditions.base.Conditioner` in :data:`~maskdit.conditions.base.CONDITIONERS`;
:mod:`maskdit.conditions.base` says what one must provide. Every module here is imported with the package, so
adding a conditioner touches only its own module (and its tests).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
