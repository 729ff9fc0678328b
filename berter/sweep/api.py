"""The sweep as a Python function: ``berter.sweep.run(**options)``, the command line's options
by their argparse names, returning the three result tables.

One source for the options: the keywords become the command line they stand for and go
through the sweep's own parser (berter.sweep.cli.build_parser), so their defaults, types,
choices and exclusions are the command line's; then the same code path as ``main``
(berter.sweep.cli.checked, then sweep). Where the command line prints one line and exits 2,
``run`` raises that BerterError.
"""

from __future__ import annotations

import argparse
import difflib
from typing import TYPE_CHECKING, Any

from berter.errors import ConfigError
from berter.sweep.cli import build_parser, checked, sweep
from berter.sweep.store import read_results

if TYPE_CHECKING:
    import pandas as pd

    from berter.sweep.plan import Plan


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options by dest name (``data_dir`` for ``--data-dir``), --help left out."""
    return {
        a.dest: a
        for a in parser._actions  # argparse keeps no public list of its actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    }


def to_argv(options: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    """The command line the keywords stand for. None leaves an option at its default; a
    flag takes True or False; a repeatable option (set, range, tracking, callback) a list;
    a comma-separated one (search, tasks, objective) a string or a list."""
    actions = option_actions(parser)
    argv: list[str] = []
    for name, value in options.items():
        if name not in actions:
            close = difflib.get_close_matches(name, actions, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown sweep option {name!r}{hint}; the options are the command line's by "
                f"their dest names: {', '.join(sorted(actions))}"
            )
        action = actions[name]
        flag = max(action.option_strings, key=len)  # the long form: --data-dir, not an alias
        if value is None:
            continue
        if action.nargs == 0:  # store_true
            if not isinstance(value, bool):
                raise ConfigError(f"sweep option {name} takes True or False, got {value!r}")
            argv += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise ConfigError(f"sweep option {name} takes a list, got {value!r}")
            argv += [f"{flag}={item}" for item in items]
        else:
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            argv.append(f"{flag}={text}")  # one token: a value may start with "-"
    return argv


def options_namespace(**options: Any) -> argparse.Namespace:
    """The parsed options, exactly as ``python sweeps/run.py`` would have them."""
    parser = build_parser()
    return parser.parse_args(to_argv(options, parser))


def run(**options: Any) -> dict[str, pd.DataFrame] | Plan:
    """Run a sweep; the options are ``python sweeps/run.py``'s (see its ``--help``) by their
    dest names, e.g. ``run(search="lr,batch", data="demo", num_samples=4, set=["lr=2e-5"])``.

    Returns the sweep's three tables, ``{"trials", "epochs", "exits"}`` as
    berter.sweep.store.read_results reads them from ``<results>/<name>/``, also when some
    trials errored or diverged (their ``status`` column says so; the command line would exit
    1). ``dry_run=True`` prints the plan and returns it (:class:`berter.sweep.plan.Plan`):
    nothing started, nothing written. Bad options raise the one-line BerterError the command
    line prints. A Ray instance this call starts is stopped when it returns.
    """
    args = options_namespace(**options)
    if args.dry_run:
        plan, data = checked(args)
        sweep(args, plan, data)
        return plan
    import ray

    already_up = ray.is_initialized()
    try:
        plan, data = checked(args)
        sweep(args, plan, data)
    finally:
        if not already_up and ray.is_initialized():
            ray.shutdown()
    return read_results(plan.directory)
