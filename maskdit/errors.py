"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class MaskditError(Exception):
    """Base class: a problem with the user's input, config or files (not a bug in maskdit)."""


class ConfigError(MaskditError, ValueError):
    """A config value, option or shape that cannot work."""


class DataError(MaskditError, ValueError):
    """A dataset that is missing, empty, corrupt or inconsistent."""


class CheckpointError(MaskditError, ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, path: object):
        super().__init__(f"stopped by signal {signum}: saved {path}")
        self.signum, self.path, self.exit_code = signum, path, 128 + signum


def check_keys(prefix: str, section: object, checks: list[tuple[str, bool, str]]) -> None:
    """Refuse the first ``(key, ok, allowed)`` that is not ok, naming the config key and its value:
    ``config key PREFIX.KEY must be ALLOWED, got VALUE``. Each config section lists its own checks."""
    for key, ok, allowed in checks:
        if not ok:
            value = section
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"config key {prefix}{key} must be {allowed}, got {value!r}")
