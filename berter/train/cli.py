"""`python -m berter.train`: train and evaluate one configuration from the command line.
"""

from __future__ import annotations

from berter.config import Config
from berter.train.run import train_and_evaluate


def _field_option(name: str):
    """The argparse type of Config field ``name``: ``berter.config.parse_field``, whose
    ConfigError argparse reports as a malformed option."""
    import argparse

    from berter.config import parse_field
    from berter.errors import ConfigError

    def parse(text: str):
        try:
            return parse_field(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def _field_parser():
    """argparse options generated from the Config fields (one source of truth); a bad option
    is a one-line ConfigError, like every other user error."""
    import dataclasses

    from berter.errors import RaisingArgumentParser

    parser = RaisingArgumentParser(
        prog="python -m berter.train",
        description="Train and evaluate one configuration; prints its metrics as JSON.",
    )
    for f in dataclasses.fields(Config):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_field_option(f.name),
            default=None,
            help=f"default: {f.default!r}",
        )
    parser.add_argument(
        "--callback",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="a TrainerCallback subclass to add, e.g. mypkg.hooks:EarlyStop (repeatable; "
        "see berter.train.callbacks)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    import json
    import sys

    from berter.errors import BerterError
    from berter.train.callbacks import EpochLog, build_callbacks

    try:
        parsed = vars(_field_parser().parse_args(argv))
        callbacks = [EpochLog(), *build_callbacks(parsed.pop("callback"))]
        cfg = Config.from_dict({k: v for k, v in parsed.items() if v is not None})
        result = train_and_evaluate(cfg, callbacks=callbacks)
    except BerterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


