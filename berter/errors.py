"""Errors a user can cause. The command lines print them as one line and exit 2."""

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any


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


def positive_int(text: str) -> int:
    """argparse type for counts (examples, epochs, trials, threads): 0 would be read as "use
    the default" by ``args.n or default``, and a negative count means nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type for rates and factors that must be above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for tolerances: zero allowed, negative (or NaN) not."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def one_line_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a script's ``main`` so that a BerterError (the user's input: a missing data
    directory, a bad setting) is one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except BerterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapped
