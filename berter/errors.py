"""Errors a user can cause. The command lines print them as one line and exit 2."""

import argparse
import sys


class BerterError(Exception):
    """Base class for problems in the user's input (data, config, paths)."""


class DataError(BerterError):
    """A data file is missing, unreadable or malformed."""


class ConfigError(BerterError):
    """A config value, a variant combination or a command-line option is invalid."""


class RaisingArgumentParser(argparse.ArgumentParser):
    """argparse whose malformed options raise ConfigError, for a ``main`` that already turns
    BerterError into one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the command lines: a malformed option is one line on stderr and exit 2
    (no usage block; ``--help`` shows it)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
