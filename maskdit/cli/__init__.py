"""The ``maskdit`` command line: one module per command, argument types in :mod:`~maskdit.cli.args`."""
