"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class MaskditError(Exception):
    """Base class: a problem with the user's input, config or files (not a bug in maskdit)."""


class ConfigError(MaskditError, ValueError):
    """A config value, option or shape that cannot work."""


class DataError(MaskditError, ValueError):
    """A dataset that is missing, empty, corrupt or inconsistent."""


class CheckpointError(MaskditError, ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""
