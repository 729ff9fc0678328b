"""Errors a user can cause. The command lines print them as one line and exit 2."""


class BerterError(Exception):
    """Base class for problems in the user's input (data, config, paths)."""


class DataError(BerterError):
    """A data file is missing, unreadable or malformed."""


class ConfigError(BerterError):
    """A config value, a variant combination or a command-line option is invalid."""
