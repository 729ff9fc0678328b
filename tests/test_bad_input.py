"""Malformed input to a sweep: exit status 2, one line on stderr, nothing written anywhere.

Every case builds its own inputs under tmp_path (a valid CS224N-layout data directory that
it then breaks, a results root holding an unrelated sweep) and checks that tmp_path is
byte-for-byte and mtime-for-mtime unchanged afterwards: no results directory is created and
no existing file is touched. Most cases call ``berter.sweep.main`` in-process (fast); a few
run ``sweeps/run.py`` as a real process, the way users meet these errors.
"""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from faults import FAULT_ENV

import berter.sweep.plan
import berter.sweep.tuner
from berter.errors import ConfigError, first_line
from berter.sweep.cli import main as sweep_main
from berter.sweep.plan import SWEEP_FILE

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "sst": ("ids-sst", ["id", "sentence", "sentiment"]),
    "para": ("quora", ["id", "sentence1", "sentence2", "is_duplicate"]),
    "sts": ("sts", ["id", "sentence1", "sentence2", "similarity"]),
}


def rows(task: str, n: int = 8) -> list[list[str]]:
    if task == "sst":
        return [[f"s{i}", f"sentence {i} is fine .", str(i % 5)] for i in range(n)]
    if task == "para":
        return [
            [f"q{i}", f"how do i learn {i}?", f"what way to learn {i}?", f"{i % 2}.0"]
            for i in range(n)
        ]
    return [
        [f"t{i}", f"a man plays {i}", f"a man is playing {i}", f"{(i % 11) / 2}"] for i in range(n)
    ]


def write(path: Path, header: list[str], body: list[list[str]], sep: str = "\t") -> None:
    """A CS224N file: header with an unnamed leading index column, one row per example."""
    lines = [["", *header]] + [[str(i), *r] for i, r in enumerate(body)]
    path.write_text("".join(sep.join(line) + "\n" for line in lines), encoding="utf-8")


def data_dir(tmp: Path, **broken: Callable[[Path], None]) -> Path:
    """A valid data directory for sst/para/sts; ``broken[file_stem]`` then edits one file."""
    root = tmp / "data"
    root.mkdir(exist_ok=True)
    for task, (stem, header) in FILES.items():
        for split in ("train", "dev"):
            write(root / f"{stem}-{split}.csv", header, rows(task))
    for name, edit in broken.items():
        edit(root / f"{name}.csv")
    return root


def with_row(task: str, row: list[str]) -> Callable[[Path], None]:
    """Replace the data of a file by one valid row plus ``row``."""
    stem, header = FILES[task]
    return lambda path: write(path, header, [rows(task, 1)[0], row])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


def demo(tmp: Path, *extra: str, search: str = "lr") -> list[str]:
    return ["--search", search, "--data", "demo", "--results", str(tmp / "results"), *extra]


def on_data(tmp: Path, **broken: Callable[[Path], None]) -> list[str]:
    return on_dir(tmp, data_dir(tmp, **broken))


def on_dir(tmp: Path, directory: Path) -> list[str]:
    return ["--search", "lr", "--data-dir", str(directory), "--results", str(tmp / "results")]


def missing(stem: str) -> Callable[[Path], list[str]]:
    return lambda tmp: on_data(tmp, **{stem: Path.unlink})


def not_a_dir(tmp: Path) -> list[str]:
    (tmp / "data").write_text("not a directory\n")
    return on_dir(tmp, tmp / "data")


def comma_separated(path: Path) -> None:
    write(path, FILES["sst"][1], rows("sst"), sep=",")


def without_label_column(path: Path) -> None:
    write(path, FILES["sts"][1][:-1], [r[:-1] for r in rows("sts")])


def results_under_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file, not a directory\n")
    return ["--search", "lr", "--data", "demo", "--results", str(tmp / "taken" / "results")]


def resume_unknown(tmp: Path) -> list[str]:
    other = tmp / "results" / "other"
    other.mkdir(parents=True)
    (other / SWEEP_FILE).write_text("{}")
    return ["--resume", "--name", "nope", "--results", str(tmp / "results")]


def empty_model_dir(tmp: Path) -> list[str]:
    (tmp / "model").mkdir()
    return demo(tmp, "--model", str(tmp / "model"))


# id -> (argv from tmp_path, words the one-line message must contain)
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "data dir is a file": (not_a_dir, "not a readable directory"),
    "data dir does not exist": (
        lambda t: on_dir(t, t / "nowhere"),
        "data directory does not exist",
    ),
    **{
        f"missing {stem}-{split}.csv": (
            missing(f"{stem}-{split}"),
            f"{stem}-{split}.csv: missing file",
        )
        for stem, _ in FILES.values()
        for split in ("train", "dev")
    },
    "comma instead of tab": (
        lambda t: on_data(t, **{"ids-sst-train": comma_separated}),
        "comma-separated",
    ),
    "missing label column": (
        lambda t: on_data(t, **{"sts-dev": without_label_column}),
        "missing column(s) similarity",
    ),
    "empty file": (
        lambda t: on_data(t, **{"quora-dev": lambda p: p.write_bytes(b"")}),
        "quora-dev.csv: empty file",
    ),
    "non-numeric label": (
        lambda t: on_data(t, **{"ids-sst-train": with_row("sst", ["x", "great .", "positive"])}),
        "row 2: label 'positive' in column 'sentiment' is not a number",
    ),
    "sst label out of range": (
        lambda t: on_data(t, **{"ids-sst-dev": with_row("sst", ["x", "great .", "7"])}),
        "label 7 is out of range",
    ),
    "paraphrase label out of range": (
        lambda t: on_data(t, **{"quora-train": with_row("para", ["x", "a ?", "b ?", "2"])}),
        "label 2 is out of range",
    ),
    "sts score above 5": (
        lambda t: on_data(t, **{"sts-train": with_row("sts", ["x", "a", "b", "5.5"])}),
        "label 5.5 is out of range (expected 0 to 5)",
    ),
    "duplicate ids": (
        lambda t: on_data(t, **{"quora-dev": with_row("para", ["q0", "a ?", "b ?", "1"])}),
        "duplicate id 'q0'",
    ),
    "unknown task": (lambda t: demo(t, "--tasks", "sst,nli"), "unknown task 'nli'"),
    "unknown --search name": (
        lambda t: demo(t, search="lr,warp"),
        "unknown --search name(s): warp",
    ),
    "negative lr": (lambda t: demo(t, "--set", "lr=-1", search="dropout"), "lr must be > 0"),
    "batch size 0": (lambda t: demo(t, "--set", "batch=0"), "batch_size must be >= 1"),
    "dropout 1": (lambda t: demo(t, "--set", "dropout=1"), "dropout must be in [0, 1)"),
    "negative exit tolerance": (
        lambda t: demo(t, "--set", "exit_tolerance=-0.01"),
        "exit_tolerance must be in [0, 1)",
    ),
    "exit confidence 1": (
        lambda t: demo(t, "--set", "exit_confidence=1"),
        "exit_confidence must be in [0, 1)",
    ),
    "lr not a number": (
        lambda t: demo(t, "--set", "lr=fast", search="dropout"),
        "'fast' is not a number",
    ),
    "--set a searched name": (
        lambda t: demo(t, "--set", "lr=1e-4"),
        "--set lr conflicts with --search lr",
    ),
    "unknown task order": (
        lambda t: demo(t, "--set", "task_order=by_size"),
        "task_order='by_size' is not one of round_robin, proportional",
    ),
    "amp not a boolean": (lambda t: demo(t, "--set", "amp=maybe"), "'maybe' is not one of true"),
    "calib_max not an integer": (
        lambda t: demo(t, "--set", "calib_max=1.5"),
        "--set calib_max: '1.5' is not an integer",
    ),
    "--set a field with its own option": (
        lambda t: demo(t, "--set", "max_train=10"),
        "--set 'max_train=10': give NAME=VALUE",
    ),
    "--range a set-only field": (
        lambda t: demo(t, "--range", "grad_clip=1:2"),
        "--range 'grad_clip=1:2': give NAME=VALUE",
    ),
    "log range through 0": (lambda t: demo(t, "--range", "lr=-1e-3:1e-3"), "needs LOW > 0"),
    "reversed range": (lambda t: demo(t, "--range", "lr=1e-3:1e-5"), "LOW must be below HIGH"),
    "dropout range past 1": (
        lambda t: demo(t, "--range", "dropout=0.1:1.5", search="dropout"),
        "range value 1.5 is invalid",
    ),
    "range of an unsearched name": (
        lambda t: demo(t, "--range", "dropout=0.1:0.2"),
        "add dropout to --search",
    ),
    "variant filter matches nothing": (
        lambda t: demo(t, "--variants", "strategy=final,exit=lte|entropy"),
        "matches no variant",
    ),
    "unknown variant value": (lambda t: demo(t, "--variants", "exit=warp"), "unknown value 'warp'"),
    "exit method with strategy=final": (
        lambda t: demo(t, "--variants", "strategy=final,exit=lte"),
        "exit_method=lte conflicts with strategy=final",
    ),
    "model path does not exist": (
        lambda t: demo(t, "--model", str(t / "no-model")),
        "does not exist",
    ),
    "model dir without a model": (empty_model_dir, "cannot load model"),
    "results path not writable": (results_under_a_file, "is not writable"),
    "resume of an unknown sweep": (resume_unknown, "nothing to resume: no sweep 'nope'"),
    "resume with no sweep at all": (
        lambda t: ["--resume", "--results", str(t / "results")],
        "nothing to resume",
    ),
    "bad sweep name": (lambda t: demo(t, "--name", "../escape"), "--name '../escape'"),
    "callback module not importable": (
        lambda t: demo(t, "--callback", "no_such_module_xyz:Hook"),
        "--callback no_such_module_xyz:Hook: cannot import no_such_module_xyz",
    ),
    "callback not a TrainerCallback": (
        lambda t: demo(t, "--callback", "argparse:ArgumentParser"),
        "not a subclass of berter.train.callbacks.TrainerCallback",
    ),
}
# Run as real processes (seconds each: torch and Ray imports): data, variants, resume.
SUBPROCESS = {
    "comma instead of tab",
    "exit method with strategy=final",
    "resume of an unknown sweep",
}


def check_one_line(rc: int, out: str, err: str, message: str) -> None:
    assert rc == 2, err
    assert out == ""  # nothing announced: the sweep never started
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert message in err, err


@pytest.fixture
def no_early_ray(monkeypatch):
    """In-process cases check without starting Ray (seconds each); the script cases below
    run the real sweep, which starts Ray during the late checks and stops it on an error."""
    monkeypatch.setattr(berter.sweep.tuner, "early_ray", lambda started: None)


@pytest.mark.parametrize("case", sorted(set(CASES) - SUBPROCESS))
@pytest.mark.usefixtures("no_early_ray")
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    make_argv, message = CASES[case]
    argv = make_argv(tmp_path)
    before = snapshot(tmp_path)
    rc = sweep_main(argv)
    captured = capsys.readouterr()
    check_one_line(rc, captured.out, captured.err, message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", sorted(SUBPROCESS))
def test_bad_input_to_the_script_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    make_argv, message = CASES[case]
    argv = make_argv(tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "sweeps/run.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    check_one_line(proc.returncode, proc.stdout, proc.stderr, message)
    assert snapshot(tmp_path) == before


def test_the_catalogue_covers_at_least_fifteen_inputs():
    assert len(CASES) >= 15 and SUBPROCESS <= set(CASES)


@pytest.mark.usefixtures("no_early_ray")
def test_a_callback_that_fails_to_build_is_a_user_error(tmp_path, capsys, monkeypatch):
    """The test-only fault injector rejects a malformed BERTER_TEST_FAULT when the sweep
    builds it as a check: one line, before any trial starts."""
    monkeypatch.setenv(FAULT_ENV, "raise@2,explode@1")
    before = snapshot(tmp_path)
    argv = demo(tmp_path, "--max-train", "8", "--callback", "faults:FaultInjector")
    assert sweep_main(argv) == 2
    captured = capsys.readouterr()
    check_one_line(2, captured.out, captured.err, "bad entry 'explode@1'")
    assert snapshot(tmp_path) == before


def test_a_valid_data_directory_passes_the_same_checks(tmp_path):
    """The cases above fail because of what they break, not because the fixture is invalid."""
    from berter.data.files import check

    assert check(data_dir(tmp_path)) == {t: {"train": 8, "dev": 8} for t in FILES}


def test_set_and_range_reach_the_plan(tmp_path):
    """The clean way to fix or bound a name: --set and --range (the counterpart of the cases)."""
    from berter.sweep.cli import build_parser
    from berter.sweep.plan import make_plan

    argv = demo(tmp_path, "--set", "batch=8", "--set", "dropout=0.1", "--range", "lr=1e-5:1e-3")
    plan, _ = make_plan(build_parser().parse_args([*argv, "--search", "lr,optimizer"]))
    assert (plan.base["batch_size"], plan.base["dropout"]) == (8, 0.1)
    params = {p["name"]: p for p in plan.params}
    assert (params["lr"]["low"], params["lr"]["high"]) == (1e-5, 1e-3)
    narrowed = make_plan(
        build_parser().parse_args(demo(tmp_path, "--range", "batch=8|16", search="batch"))
    )[0]
    assert narrowed.params[0]["choices"] == (8, 16)
    assert not (tmp_path / "results").exists()


def test_set_fixes_config_fields_that_are_not_searched(tmp_path):
    """--set reaches any plain Config field, typed by its annotation (str, bool, int, float,
    None)."""
    from berter.config import Config
    from berter.sweep.cli import build_parser
    from berter.sweep.plan import make_plan

    sets = ["task_order=proportional", "amp=off", "calib_max=200", "grad_clip=0.5"]
    sets += ["exit_threshold=none", "pooling=cls"]
    argv = demo(tmp_path, *[a for s in sets for a in ("--set", s)])
    plan, _ = make_plan(build_parser().parse_args(argv))
    fixed = {k: plan.base[k] for k in ("task_order", "amp", "calib_max", "grad_clip", "pooling")}
    assert fixed == {
        "task_order": "proportional",
        "amp": False,
        "calib_max": 200,
        "grad_clip": 0.5,
        "pooling": "cls",
    }
    assert plan.base["exit_threshold"] is None
    assert Config.from_dict(plan.base).task_order == "proportional"


def test_the_sweep_and_the_training_command_line_read_a_field_with_one_parser(capsys):
    """berter.config.parse_field types a value by the field's annotation for both."""
    from berter.config import parse_field
    from berter.errors import ConfigError
    from berter.sweep.space import parse_settings
    from berter.train.cli import main as train_main

    assert parse_field("amp", "Off") is False and parse_field("calib_max", "2e2") == 200
    assert parse_field("exit_threshold", "none") is None and parse_field("lr", "2e-5") == 2e-5
    assert parse_field("tasks", "sst, sts") == ("sst", "sts") and parse_field("pooling", "cls")
    assert train_main(["--calib-max", "1.5"]) == 2
    assert "--calib-max: '1.5' is not an integer" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--set calib_max: '1.5' is not an integer"):
        parse_settings(["calib_max=1.5"], [])


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("berter.infer", ["ckpt", "data.csv", "--batch-size", "x"], "invalid int value: 'x'"),
        ("berter.infer", [], "required: checkpoint, datafile"),
        ("berter.report.cli", ["--nope"], "required: results"),
        ("berter.data.files", ["fetch"], "invalid choice: 'fetch'"),
        ("berter.data.files", ["check"], "required: dir"),
    ],
)
def test_every_command_line_reports_a_malformed_option_in_one_line(module, argv, message, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.usefixtures("no_early_ray")
def test_a_package_outside_berters_requirements_is_one_line_before_any_trial(
    tmp_path, capsys, monkeypatch
):
    """pip warns of a transformers outside berter's range and installs it anyway: the driver
    refuses it from the installed metadata (the trials would each fail importing the model)."""
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "4.46.0" if name == "transformers" else real(name),
    )
    argv = demo(tmp_path)
    before = snapshot(tmp_path)
    rc = sweep_main(argv)
    captured = capsys.readouterr()
    check_one_line(rc, captured.out, captured.err, "the installed packages cannot run the model: "
                   "transformers 4.46.0 is installed; berter needs transformers")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_the_requirement_check_skips_extras_and_names_a_missing_package(monkeypatch):
    import importlib.metadata

    from packaging.requirements import Requirement

    from berter.sweep.preflight import check_requirements

    real = importlib.metadata.version
    listed = [Requirement(line) for line in importlib.metadata.requires("berter")]
    needed = {r.name.lower() for r in listed if not r.marker}
    extras_only = {r.name.lower() for r in listed if r.marker} - needed  # pytest, wandb, ...
    absent: set[str] = set()

    def version(name: str) -> str:
        if name.lower() in extras_only | absent:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    check_requirements()  # the extras' packages are not needed to run a sweep
    absent.add("optuna")
    with pytest.raises(ConfigError, match="optuna is not installed; berter needs optuna>="):
        check_requirements()


def test_a_late_error_stops_the_ray_instance_the_check_started(tmp_path, capsys, monkeypatch):
    """Ray starts while the model is checked; a bad model stops it again, silently."""
    import threading

    import ray

    seen: dict[str, object] = {}
    start_ray, check_model = berter.sweep.tuner.start_ray, berter.sweep.plan._check_model

    def spy_start(*a, **k):
        seen["ray thread"] = threading.current_thread()
        seen["ray started"] = start_ray(*a, **k)
        return seen["ray started"]

    def spy_check(model):
        seen["check thread"] = threading.current_thread()
        return check_model(model)

    monkeypatch.setattr(berter.sweep.tuner, "start_ray", spy_start)
    monkeypatch.setattr(berter.sweep.plan, "_check_model", spy_check)
    assert not ray.is_initialized()
    argv = empty_model_dir(tmp_path)
    before = snapshot(tmp_path)
    rc = sweep_main(argv)
    captured = capsys.readouterr()
    check_one_line(rc, captured.out, captured.err, "cannot load model")
    # overlapped: Ray started in the main thread, the model checked in a helper thread
    assert seen["ray started"] is True and seen["ray thread"] is threading.main_thread()
    assert seen["check thread"] is not threading.main_thread()
    assert not ray.is_initialized()
    assert snapshot(tmp_path) == before


def test_an_error_line_is_the_first_non_blank_line_of_the_exception_or_its_type():
    exc = ValueError("\n  cannot open s3://b/x  \nTraceback (most recent call last):\n  ...")
    assert first_line(exc) == "cannot open s3://b/x"
    assert first_line(OSError()) == "OSError"
    assert first_line(RuntimeError("   \n\t")) == "RuntimeError"


def test_speedup_examples_reach_the_plan_and_an_older_plan_resumes_with_the_default(tmp_path):
    import json

    from berter.sweep.cli import build_parser
    from berter.sweep.plan import Plan, make_plan

    argv = demo(tmp_path, "--search", "lr", "--speedup-examples", "8")
    plan, _ = make_plan(build_parser().parse_args(argv))
    assert plan.speedup_examples == 8 and Plan.from_json(plan.to_json()).speedup_examples == 8
    older = json.loads(plan.to_json())
    del older["speedup_examples"]  # a sweep.json written before the option existed
    assert Plan.from_json(json.dumps(older)).speedup_examples == Plan.speedup_examples == 64
