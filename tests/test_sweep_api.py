"""The Python API (berter.sweep.run, Sweep): the command line's options as keyword arguments,
the same checks and defaults, errors raised as one-line ConfigErrors, and a dry run that
returns the plan. A real sweep through the API: test_progress (on a terminal)."""

import inspect

import pytest
import ray

from berter.errors import ConfigError
from berter.sweep import Sweep, run
from berter.sweep.cli import build_parser
from berter.sweep.options import parse_options, to_argv
from berter.sweep.plan import Plan


def test_keyword_arguments_become_the_command_line_they_stand_for():
    argv = to_argv(dict(
        search=["lr", "batch"], set={"lr": 2e-5, "slf": True}, num_samples=3, data="demo",
        range={"dropout": (0.05, 0.2), "batch": [8, 16]}, tracking="tensorboard",
        dry_run=True, resume=False, tasks="sst,para", max_dev=None,
    ))  # fmt: skip
    assert argv == [
        "--search=lr,batch", "--set=lr=2e-05", "--set=slf=true", "--num-samples=3",
        "--data=demo", "--range=dropout=0.05:0.2", "--range=batch=8|16",
        "--tracking=tensorboard", "--dry-run", "--tasks=sst,para",
    ]  # fmt: skip
    args = parse_options(dict(search="lr", set=["lr=2e-5"], num_samples=3, seeds=2))
    cli = build_parser().parse_args(["--search", "lr", "--set", "lr=2e-5", "--num-samples", "3",
                                     "--seeds", "2"])  # fmt: skip
    assert vars(args) == vars(cli)


def test_run_takes_every_command_line_option_with_the_parsers_default():
    parser = build_parser()
    options = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    params = inspect.signature(run).parameters
    assert {n: p.default for n, p in params.items() if n != "tune_callbacks"} == options
    assert params["num_samples"].default is None and params["results"].default == "results"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(search="lr", bogus=1), "unknown sweep option(s): bogus; options: search, "),
        (dict(search="lr", num_samples=0), "--num-samples must be >= 1, got 0"),
        (dict(search="lr", scheduler="pbt"), "argument --scheduler: invalid choice: 'pbt'"),
        (dict(search="lr", num_samples="many"), "argument --num-samples: invalid int value"),
        (dict(search="lr", resume="yes"), "resume: expected True or False, got 'yes'"),
        (dict(search="lr,warp"), "unknown --search name(s): warp"),
        (dict(variants="paper"), "--search is required"),
        (dict(search="lr", retry_errored=True), "--retry-errored needs --resume"),
    ],
)
def test_bad_options_raise_one_line_config_errors_and_start_and_write_nothing(
    tmp_path, options, message
):
    with pytest.raises(ConfigError) as caught:
        run(**options, results=str(tmp_path / "results"))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


def test_a_dry_run_returns_the_plan_and_starts_and_writes_nothing(tiny_model, tmp_path, capsys):
    options = dict(data="demo", model=tiny_model, max_train=24, max_dev=16, search="lr,dropout",
                   num_samples=3, results=str(tmp_path / "results"), name="planned")  # fmt: skip
    plan = run(**options, dry_run=True)
    out = capsys.readouterr().out
    assert isinstance(plan, Plan) and plan.name == "planned" and plan.num_samples == 3
    assert plan.search == ["lr", "dropout"] and plan.base["max_train"] == 24
    assert out.startswith("dry run of sweep planned (nothing started, nothing written)")
    assert not ray.is_initialized() and list(tmp_path.iterdir()) == []
    sweep = Sweep(**options)  # plans the same without printing
    assert sweep.plan.params == plan.params and sweep.describe() == out.rstrip("\n")
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="a dry run starts nothing"):
        Sweep(**options, dry_run=True).run()
