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


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, else its type's name: libraries
    (transformers, pyarrow, torch) put a paragraph or a traceback into one message, and a
    user's one-line error needs only its opening line."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


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


def _bounded(
    convert: Callable[[str], Any], ok: Callable[[Any], bool], wanted: str, name: str
) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then insist on ``ok``; the message names what
    was wanted and what came."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


# Counts (examples, epochs, trials, threads): 0 would be read as "the default" by
# ``args.n or default``, and a negative count means nothing.
positive_int = _bounded(int, lambda v: v >= 1, "an integer >= 1", "positive_int")
# Counts where 0 means "none" (for example --speedup-examples 0: not timed).
non_negative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
# Rates and factors; NaN and infinity fail the comparison.
positive_float = _bounded(float, lambda v: 0 < v < float("inf"), "a number > 0", "positive_float")
# Tolerances: zero allowed.
non_negative_float = _bounded(
    float, lambda v: 0 <= v < float("inf"), "a number >= 0", "non_negative_float"
)


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
