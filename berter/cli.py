"""The ``berter`` console script: one entry point, one subcommand per tool.

    berter sweep ...    run a sweep (same as ``python sweeps/run.py``)
    berter report ...   report on a sweep's results (same as ``python sweeps/report.py``)
    berter infer ...    early-exit inference from a checkpoint (``python -m berter.infer``)
    berter data ...     download or check task data (``python -m berter.data``)
    berter train ...    train one configuration (``python -m berter.train``)

Each subcommand's module is imported only when it runs, so ``berter data`` does not pay
for importing Ray.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sweep": ("berter.sweep.cli", "run a hyperparameter sweep (Ray Tune + Optuna)"),
    "report": ("berter.report.cli", "comparison report of a sweep's results"),
    "infer": ("berter.infer", "early-exit inference from a saved checkpoint"),
    "data": ("berter.data.files", "download or check task data"),
    "train": ("berter.train.cli", "train and evaluate one configuration"),
}


def usage() -> str:
    lines = ["usage: berter COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "berter COMMAND --help shows a command's options; berter --version its version."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        from berter import __version__

        print(f"berter {__version__}")
        return 0
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name == "sweep":  # its --help shows "berter sweep" as the program name
        return module.main(rest, prog="berter sweep")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
