"""`python -m berter.train`: train and evaluate one configuration from the command line.
"""

from __future__ import annotations

from berter.config import Config
from berter.train.run import train_and_evaluate


def _parse_bool(text: str) -> bool:
    import argparse

    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_parser():
    """argparse options generated from the Config fields (one source of truth); a bad option
    is a one-line ConfigError, like every other user error."""
    import dataclasses
    import typing

    from berter.errors import RaisingArgumentParser

    parser = RaisingArgumentParser(
        prog="python -m berter.train",
        description="Train and evaluate one configuration; prints its metrics as JSON.",
    )
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name == "test_fault":
            continue
        hint = str(hints[f.name])
        kind = int if "int" in hint else float if "float" in hint else str
        if "bool" in hint:
            kind = _parse_bool
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=None,
            help=f"default: {f.default!r}",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    import json
    import sys

    from berter.errors import BerterError

    try:
        parsed = vars(_field_parser().parse_args(argv))
        cfg = Config.from_dict({k: v for k, v in parsed.items() if v is not None})
        result = train_and_evaluate(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except BerterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


