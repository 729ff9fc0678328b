"""Sweeps survive a killed driver, failing trials and a lost worker node without losing results.

Real processes throughout: ``sweeps/run.py`` killed with SIGKILL and resumed, trials that
raise or diverge, a Ray worker node killed in the middle of a trial. Faults come from the
test-only callback ``--callback faults:FaultInjector`` (tests/faults.py, driven by
``BERTER_TEST_FAULT``); tests/ is on ``PYTHONPATH`` of every process that may run a trial.
While a sweep runs, the test reads its Parquet files with pandas, as a user watching it
would; every read must succeed. A tiny random backbone and a few dozen demo examples keep
each trial to about a second, so the time is mostly Ray's and torch's start-up.
"""

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
import torch
import yaml
from faults import FAULT_DIR_ENV, FAULT_ENV
from ray import tune
from tiny import tiny_config

from berter.config import AXES
from berter.sweep.cli import main as sweep_main
from berter.sweep.searcher import make_searcher
from berter.sweep.space import parse_search
from berter.sweep.store import FILES, read_results
from berter.sweep.trainable import CHECKPOINT_FILE, OPTIMIZER_FILE, TrialSpec
from berter.sweep.writer import ResultsWriter
from berter.variants import Variant

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
POLL_S = 0.2
SWEEP_TIMEOUT_S = 240  # generous: the machine may be shared
INJECT = ("--callback", "faults:FaultInjector")


def python_path() -> str:
    """PYTHONPATH with tests/ first, so that a driver and its Ray workers import ``faults``."""
    return os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)


def faults(entries: str, claims: Path) -> dict[str, str]:
    """The environment that makes FaultInjector inject ``entries``, claimed in ``claims``."""
    return {FAULT_ENV: entries, FAULT_DIR_ENV: str(claims), "PYTHONPATH": python_path()}


def sweep_args(model: str, results: Path, name: str, *extra: str) -> list[str]:
    return [
        "--data", "demo", "--model", model, "--max-train", "24", "--max-dev", "16",
        "--max-len", "32", "--results", str(results), "--name", name, "--search", "lr",
        "--scheduler", "fifo", *extra,
    ]  # fmt: skip


class Driver:
    """``sweeps/run.py`` as a process in its own process group (so that the Ray processes it
    starts can be cleaned up after it is killed), output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "sweeps/run.py", *argv],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": python_path(), **env}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc) -> None:
        self.kill_group()


class Poller:
    """Reads the three result files with pandas while a sweep runs; a read that fails (a torn
    or half-written file) raises, and so fails the test.

    Each read opens the file once: ``pd.read_parquet(path)`` opens it twice (schema, then
    data), and a rewrite in between mixes two versions; a reader of a live sweep passes an
    open file (or uses ``berter.sweep.store.read_results``), as the README says."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.reads = 0

    def read(self) -> dict[str, pd.DataFrame]:
        out = {}
        for key, name in FILES.items():
            path = self.directory / name
            if path.exists():
                with path.open("rb") as f:
                    out[key] = pd.read_parquet(f)
                self.reads += 1
        return out

    def until(self, done: Callable[[dict], bool], driver: Driver) -> dict[str, pd.DataFrame]:
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        while True:
            tables = self.read()
            if done(tables):
                return tables
            if driver.proc.poll() is not None:
                pytest.fail(f"sweep exited early ({driver.proc.returncode}):\n{driver.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for the sweep:\n{driver.output()}")
            time.sleep(POLL_S)

    def watch(self, driver: Driver) -> int:
        """Read until the sweep ends; its exit status."""
        self.until(lambda _: driver.proc.poll() is not None, driver)
        self.read()
        return driver.proc.returncode


def snapshot_is_current(sweep_dir: Path) -> bool:
    """Ray's experiment snapshot (what --resume restores) is newer than the last results write,
    so it knows every checkpoint the results mention."""
    states = list((sweep_dir / "ray").glob("experiment_state-*.json"))
    epochs = sweep_dir / FILES["epochs"]
    return (
        bool(states)
        and epochs.exists()
        and (max(p.stat().st_mtime_ns for p in states) >= epochs.stat().st_mtime_ns)
    )


# ----------------------------------------------------------------------------- 1. driver killed
def test_killed_driver_resumes_every_trial_once_without_retraining_finished_ones(
    tiny_model, tmp_path
):
    sweep_dir = tmp_path / "killed"
    poller = Poller(sweep_dir)
    argv = sweep_args(tiny_model, tmp_path, "killed", "--num-samples", "3", "--epochs", "2",
                      "--max-concurrent", "1", *INJECT)  # fmt: skip
    # the second trial to start stalls after checkpointing epoch 1: the driver dies there
    env = faults("none,stall@1", tmp_path / "claims")
    with Driver(argv, env, tmp_path / "first.log") as first:

        def second_trial_stalled(t: dict) -> bool:
            return (
                "epochs" in t
                and t["epochs"].trial_id.nunique() == 2
                and t["trials"].status.eq("terminated").sum() == 1
                and snapshot_is_current(sweep_dir)
            )

        before = poller.until(second_trial_stalled, first)
        os.kill(first.proc.pid, signal.SIGKILL)  # the driver only; Ray's processes follow it
        assert first.proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = pd.Timestamp.now(tz="UTC")
    finished = before["trials"].set_index("trial_id")
    done_id = finished.index[finished.status == "terminated"].item()
    stalled_id = finished.index[finished.status == "running"].item()

    resume = ["--resume", "--name", "killed", "--results", str(tmp_path)]
    with Driver(resume, {}, tmp_path / "resume.log") as second:
        assert poller.watch(second) == 0, second.output()
    after = read_results(sweep_dir)
    trials = after["trials"].set_index("trial_id")
    assert len(trials) == 3 and trials.index.is_unique and set(trials.status) == {"terminated"}
    for col in ("started_at", "train_seconds", "updated_at"):  # finished: not trained again
        assert trials.loc[done_id, col] == finished.loc[done_id, col], col
    epochs = after["epochs"]
    assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    old = before["epochs"].set_index(["trial_id", "epoch"]).reported_at
    new = epochs.set_index(["trial_id", "epoch"]).reported_at
    assert new[done_id].equals(old[done_id])
    # the stalled trial went on from its epoch-1 checkpoint
    assert new[(stalled_id, 1)] == old[(stalled_id, 1)] and new[(stalled_id, 2)] > killed_at
    assert trials.loc[stalled_id, "started_at"] == finished.loc[stalled_id, "started_at"]
    assert poller.reads > 10  # read many times while the sweep rewrote them


# ----------------------------------------------------------------------------- 2. trial failure
class Recorder(tune.Callback):
    """Every epoch each trial reports, and every retry, in order (a class attribute: Tune may
    copy its callbacks)."""

    events: list[tuple[str, str, int | None]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result:
            Recorder.events.append(("epoch", trial.trial_id, int(result["epoch"])))

    def on_trial_recover(self, iteration, trials, trial, **info):
        Recorder.events.append(("retry", trial.trial_id, None))


@pytest.fixture(scope="module")
def faulty_sweep(tiny_model, tmp_path_factory):
    """Four trials, two epochs, --max-failures 1: the first to start raises in epoch 2 every
    time, the second's loss turns NaN in epoch 1, the third raises in epoch 2 on its first
    start only (a transient fault), the fourth is fine."""
    results = tmp_path_factory.mktemp("faulty")
    argv = sweep_args(tiny_model, results, "faulty", "--num-samples", "4", "--epochs", "2",
                      "--max-concurrent", "1", "--max-failures", "1", *INJECT)  # fmt: skip
    Recorder.events = []
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in faults("raise@2,nan@1,raise@2:once", results / "claims").items():
            mp.setenv(name, value)  # before Ray starts: its workers inherit this environment
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            with contextlib.redirect_stdout(out):
                rc = sweep_main(argv, callbacks=[Recorder()])
        finally:
            ray.shutdown()
    directory = results / "faulty"
    claims = [(results / "claims" / f"trial-{k}").read_text() for k in range(3)]
    tables = read_results(directory)
    fine = [t for t in tables["trials"].trial_id if t not in claims]
    roles = dict(zip(["raises", "diverges", "transient", "fine"], [*claims, *fine], strict=True))
    return {"rc": rc, "out": out.getvalue(), "dir": directory, "roles": roles, **tables}


def reported(trial_id: str) -> list[int]:
    return [e for kind, t, e in Recorder.events if kind == "epoch" and t == trial_id]


def retries(trial_id: str) -> int:
    return sum(1 for kind, t, _ in Recorder.events if kind == "retry" and t == trial_id)


def test_failing_trials_are_recorded_and_the_sweep_goes_on(faulty_sweep):
    assert faulty_sweep["rc"] == 0, faulty_sweep["out"]
    trials = faulty_sweep["trials"].set_index("trial_id")
    roles = faulty_sweep["roles"]
    raised = trials.loc[roles["raises"]]
    assert raised.status == "error" and raised.epochs_done == 1
    assert raised.error == "RuntimeError: injected fault in epoch 2 (FaultInjector)"
    assert raised.dev_score > 0  # the finished epoch's metrics are kept
    assert retries(roles["raises"]) == 1  # --max-failures 1: retried once, failed again
    diverged = trials.loc[roles["diverges"]]
    assert diverged.status == "diverged" and diverged.epochs_done == 1
    assert retries(roles["diverges"]) == 0  # a diverged trial is not retried
    assert "nan" in diverged.error and "epoch 1" in diverged.error
    fine = trials.loc[roles["fine"]]  # started after the failures: the sweep went on
    assert fine.status == "terminated" and reported(roles["fine"]) == [1, 2]
    assert "error: RuntimeError: injected fault in epoch 2" in faulty_sweep["out"]
    assert "failed: 1 errored, 1 diverged; retry the errored with:" in faulty_sweep["out"]


def test_a_sweep_whose_every_trial_fails_exits_1_and_retry_errored_runs_them_again(
    tiny_model, tmp_path, capsys
):
    argv = sweep_args(tiny_model, tmp_path, "doomed", "--num-samples", "2", "--epochs", "1",
                      "--max-concurrent", "1", *INJECT)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        # before Ray starts: its workers inherit this environment, for the resume too
        for name, value in faults("raise@1:once,raise@1:once", tmp_path / "claims").items():
            mp.setenv(name, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            assert sweep_main(argv) == 1
            out = capsys.readouterr().out
            assert "failed: 2 errored, 0 diverged" in out and "no trial finished" in out
            # the retry: both errored trials start again from scratch (without
            # --retry-errored a resume leaves them errored); their ":once" faults are spent
            resume = ["--resume", "--retry-errored", "--name", "doomed", "--results", str(tmp_path)]
            assert sweep_main(resume) == 0
        finally:
            ray.shutdown()
    trials = read_results(tmp_path / "doomed")["trials"]
    assert sorted(trials.status) == ["terminated", "terminated"] and trials.error.isna().all()


def test_transient_failure_is_retried_from_its_checkpoint(faulty_sweep):
    trial_id = faulty_sweep["roles"]["transient"]
    row = faulty_sweep["trials"].set_index("trial_id").loc[trial_id]
    assert row.status == "terminated" and row.epochs_done == 2 and pd.isna(row.error)
    events = [(k, e) for k, t, e in Recorder.events if t == trial_id]
    assert events == [("epoch", 1), ("retry", None), ("epoch", 2)]  # epoch 1 not trained again
    assert "retrying from its last checkpoint" in faulty_sweep["out"]


def test_diverged_and_errored_trials_are_failed_in_the_optuna_study(faulty_sweep):
    """Told as complete with its last score, a diverged trial could be the study's best and
    pull TPE toward diverging settings. The study is the searcher state Tune saved."""
    searcher = make_searcher(
        parse_search("lr"), ["v"], algorithm="optuna", metric="dev_score", mode="max", seed=0,
        num_samples=4,
    )  # fmt: skip
    searcher.restore_from_dir(str(faulty_sweep["dir"] / "ray"))
    study, roles = searcher._ot_study, faulty_sweep["roles"]
    state = {role: study.trials[searcher._ot_trials[t].number].state for role, t in roles.items()}
    failed, complete = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    assert state == {"raises": failed, "diverges": failed, "transient": complete, "fine": complete}
    assert study.best_trial.number != searcher._ot_trials[roles["diverges"]].number


# ----------------------------------------------------------------------------- 5. disk
def test_each_ended_trial_keeps_only_its_best_checkpoint_without_optimiser_state(faulty_sweep):
    """--keep-checkpoints best (the default): while a trial ran, Tune kept its best epoch's
    checkpoint and its latest (which a retry resumed from); once it has ended (finished, or
    errored after its retry) the best epoch's is all it keeps, without the optimiser file. A
    trial that diverged in its first epoch never had one."""
    ray_dir = faulty_sweep["dir"] / "ray"
    for row in faulty_sweep["trials"].itertuples():
        (trial_dir,) = ray_dir.glob(f"*_{row.trial_id}")
        kept = list(trial_dir.glob("checkpoint_*"))
        epochs = {
            torch.load(d / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["epoch"]
            for d in kept
        }
        expected = set() if row.status == "diverged" else {row.best_epoch}
        assert len(kept) == len(expected) and epochs == expected, row.trial_id
        assert not list(trial_dir.rglob(OPTIMIZER_FILE)), row.trial_id


def test_disk_use_is_printed_and_bounded(faulty_sweep):
    directory = faulty_sweep["dir"]
    match = re.search(r"^disk: ([\d.]+) MB in (\S+)$", faulty_sweep["out"], re.MULTILINE)
    assert match and match[2] == str(directory)
    actual = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert abs(float(match[1]) * 1e6 - actual) <= 0.05e6
    ckpt = max(p.stat().st_size for p in directory.rglob(CHECKPOINT_FILE))
    trials = len(faulty_sweep["trials"])
    assert actual <= trials * ckpt + 5e6  # one weights-only checkpoint per trial, logs, tables


# ----------------------------------------------------------------------------- 3. worker lost
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A Ray head without CPUs plus worker nodes of one CPU, as ``ray start --block`` processes
    on this machine, each in its own process group so that a node can be killed whole.

    Its own temp dir (short: Unix socket paths) keeps ``ray.init()`` elsewhere on the machine
    from attaching to it; a fresh auth token and fast health checks (node death noticed in
    about two seconds) are passed to every node and to the driver.
    """

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = free_port()
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_node(self, head: bool = False) -> subprocess.Popen:
        args = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
            "--disable-usage-stats", "--temp-dir", str(self.temp), "--node-ip-address",
            "127.0.0.1", f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        ]  # fmt: skip
        if head:
            args += [f"--port={self.port}", "--head", "--num-cpus=0", "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}", "--num-cpus=1"]
        env = {
            **os.environ, **self.env, "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }  # fmt: skip
        with (self.temp / f"node-{len(self.nodes)}.log").open("w") as log:
            node = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.nodes.append(node)
        if head:
            self._wait_for_gcs()
        return node

    def _wait_for_gcs(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            assert self.nodes[0].poll() is None, (self.temp / "node-0.log").read_text()
            time.sleep(0.2)
        pytest.fail("the Ray head did not start")

    @staticmethod
    def kill(node: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGKILL every node's process group: the cluster is thrown away, and a graceful
        SIGTERM kept the head waiting 20 s and a worker 10 s for nothing."""
        for node in self.nodes:
            self.kill(node)
            node.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.mark.slow
def test_lost_worker_node_reschedules_the_trial_from_its_checkpoint(tiny_model, tmp_path):
    cluster = LocalCluster()
    # the trial runs on a worker node, whose processes inherit the node's environment, not the
    # driver's: the fault goes to every node. It stalls after checkpointing epoch 1.
    cluster.env.update(faults("stall@1", tmp_path / "claims"))
    try:
        cluster.start_node(head=True)
        worker = cluster.start_node()
        sweep_dir = tmp_path / "lost"
        poller = Poller(sweep_dir)
        argv = sweep_args(tiny_model, tmp_path, "lost", "--num-samples", "1", "--epochs", "2",
                          "--max-failures", "2", "--address", cluster.address, *INJECT)  # fmt: skip
        with Driver(argv, cluster.env, tmp_path / "driver.log") as driver:
            before = poller.until(
                lambda t: "epochs" in t and len(t["epochs"]) == 1 and snapshot_is_current(sweep_dir),
                driver,
            )  # fmt: skip
            cluster.kill(worker)  # the worker node's raylet, agents and `ray start`
            killed_at = pd.Timestamp.now(tz="UTC")
            cluster.start_node()  # a replacement, so that the trial has somewhere to go
            assert poller.watch(driver) == 0, driver.output()
            output = driver.output()
    finally:
        cluster.stop()
    assert "retrying from its last checkpoint" in output
    after = read_results(sweep_dir)
    row = after["trials"].iloc[0]
    assert len(after["trials"]) == 1 and row.status == "terminated" and row.epochs_done == 2
    epochs = after["epochs"].set_index("epoch").reported_at
    assert epochs[1] == before["epochs"].set_index("epoch").reported_at[1]  # not trained again
    assert epochs[2] > killed_at


# ----------------------------------------------------------------------------- resume bookkeeping
def test_rows_of_trials_unknown_to_the_restored_experiment_are_dropped(tmp_path):
    """A driver killed before Ray's next snapshot leaves rows of trials the resumed experiment
    never heard of; the searcher replaces them, so they must go, or they would count twice."""
    from types import SimpleNamespace

    variant = Variant({a: getattr(tiny_config(), a) for a in AXES})
    spec = TrialSpec(tiny_config().to_dict(), [variant])
    writer = ResultsWriter(str(tmp_path), spec, "s", ("sst", "para", "sts"), echo=False)
    writer.setup()
    result = {"epoch": 1, "epochs_planned": 2, "dev_score": 0.5, "train_seconds": 1.0}
    for trial_id in ("known", "orphan"):
        trial = SimpleNamespace(trial_id=trial_id, config={"variant": variant.name})
        writer.on_trial_start(0, [], trial)
        writer.on_trial_result(0, [], trial, result)
    resumed = ResultsWriter(str(tmp_path), spec, "s", ("sst", "para", "sts"), echo=False)
    resumed.setup()
    resumed.on_step_begin(0, [SimpleNamespace(trial_id="known")])
    tables = read_results(tmp_path)
    assert tables["trials"].trial_id.tolist() == ["known"]
    assert tables["epochs"].trial_id.tolist() == ["known"]
    resumed.on_step_begin(1, [])  # only the first step after a restore prunes
    assert read_results(tmp_path)["trials"].trial_id.tolist() == ["known"]


# ----------------------------------------------------------------------------- 6. safe loading
UNSAFE = [
    (re.compile(r"pickle\.loads?\("), "unpickling"),
    (re.compile(r"(?<![\w.])eval\(|\bexec\("), "eval/exec"),
    (re.compile(r"yaml\.(unsafe_)?load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"yaml\.full_load\("), "yaml.full_load"),
    (re.compile(r"weights_only\s*=\s*False"), "torch.load(weights_only=False)"),
]
# The one unpickling the code does: the exception object Ray itself pickled for a failed trial
# (error_message reads it to record the original message). Ray's own restore unpickles its
# experiment state anyway, so --resume trusts the results directory in any case.
ALLOWED = {("berter/sweep/writer.py", "return cloudpickle.loads(Path(path).read_bytes())")}


def python_sources() -> list[Path]:
    return sorted(p for d in ("berter", "sweeps", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def test_code_loads_nothing_unsafely():
    found = []
    for path in python_sources():
        rel = str(path.relative_to(ROOT))
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if (rel, code.strip()) in ALLOWED:
                continue
            for pattern, what in UNSAFE:
                if pattern.search(code):
                    found.append(f"{rel}:{n}: {what}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                found.append(f"{rel}:{n}: torch.load without weights_only=True")
    assert not found, "\n".join(found)


def test_the_scan_catches_what_it_looks_for():
    bad = [
        "pickle.load(f)",
        "cloudpickle.loads(b)",
        "eval(text)",
        "yaml.load(f)",
        "weights_only=False",
    ]
    for line in bad:
        assert any(p.search(line) for p, _ in UNSAFE), line
    assert not any(p.search(s) for p, _ in UNSAFE for s in ("model.eval()", "yaml.safe_load(f)"))


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-gcp.yaml"])
def test_cluster_opens_only_ssh_from_one_address(name):
    """The documented firewall: SSH from your /32 and node-to-node traffic, nothing else; no
    Ray port (dashboard 8265, GCS 6379, client 10001) is reachable from outside."""
    text = (ROOT / name).read_text()
    rules = [
        line.split("#", 1)[1] + " " + nxt.split("#", 1)[1]
        for line, nxt in zip(text.splitlines(), text.splitlines()[1:], strict=False)
        if "authorize-security-group-ingress" in line or "firewall-rules create" in line
    ]
    assert rules
    for rule in rules:
        opens_ssh = ("--port 22 " in rule or "tcp:22 " in rule) and "$MY_IP/32" in rule
        internal = "--source-group $SG" in rule or "--source-ranges 10." in rule
        assert opens_ssh or internal, rule
        assert "0.0.0.0/0" not in rule and not re.search(r"\b(8265|6379|10001)\b", rule)
    cfg = yaml.safe_load(text)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in yaml.safe_dump(cfg)
