"""Sweeps, the report and ``berter infer`` on an S3 bucket: a real S3-compatible server.

moto's standalone server (``moto_server``, from ``moto[server]`` in the dev extra) runs on a
free loopback port for this module, behind a small TCP forwarder: ``AWS_ENDPOINT_URL`` points
at the forwarder, so stopping it makes the endpoint unreachable (connections refused) while
moto keeps what was written, for the test to read once it is started again. The sweeps are
real processes (tests/test_reliability.py's ``Driver``), killed and held with its
fault-injection callback (tests/faults.py); the tiny random backbone keeps each trial short.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from faults import RELEASE
from test_infer import write_sst_file
from test_reliability import INJECT, SWEEP_TIMEOUT_S, Driver, faults, free_port, sweep_args
from tiny import tiny_config

from berter.checkpoint import load_model
from berter.config import AXES
from berter.infer import main as infer_main
from berter.objstore import TIMEOUT_ENV
from berter.report.cli import main as report_main
from berter.sweep.cli import main as sweep_main
from berter.sweep.store import Store, read_results
from berter.sweep.trainable import CHECKPOINT_FILE, TrialSpec
from berter.sweep.writer import ResultsWriter
from berter.variants import Variant


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        assert proc is None or proc.poll() is None, "the server exited"
        time.sleep(0.1)
    pytest.fail(f"nothing listens on port {port}")


class Forwarder:
    """A TCP forwarder from its own loopback port to the S3 server: ``stop`` closes the port
    and cuts every connection (the endpoint is gone), ``start`` opens it again."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self.running = False
        self.conns: list[socket.socket] = []

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        self.listener.settimeout(0.1)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.running = False
        self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns = []

    def _accept(self) -> None:
        listener = self.listener
        while self.running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server on a free port, stopped after the module, behind a Forwarder."""
    port = free_port()
    server = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, server)
        forwarder = Forwarder(port)
        forwarder.start()
        yield forwarder
        forwarder.stop() if forwarder.running else None
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def bucket(endpoint, monkeypatch) -> str:
    """A new bucket on the endpoint, and the environment that points every client (pyarrow
    here, the sweep's processes and their Ray workers) at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{endpoint.port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv(TIMEOUT_ENV, "3")
    if not endpoint.running:
        endpoint.start()
    name = f"b-{uuid.uuid4().hex[:12]}"  # unique: the local study cache is keyed by the URI
    fs = pafs.S3FileSystem(
        endpoint_override=f"http://127.0.0.1:{endpoint.port}", allow_bucket_creation=True
    )
    fs.create_dir(name)
    return name


def s3_fs() -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"])


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- store
def test_results_tables_round_trip_through_the_bucket(bucket):
    uri = f"s3://{bucket}/sweeps/t"
    store = Store(uri)
    assert store.fs is not None and not store.exists("trials.parquet")
    table = pa.table({"trial_id": ["a", "b"], "dev_score": [0.5, 0.7]})
    store.write_table("trials.parquet", table)
    assert store.read_table("trials.parquet").equals(table)
    trials = read_results(uri, must_exist=True)["trials"]
    assert trials.trial_id.tolist() == ["a", "b"] and trials.dev_score.tolist() == [0.5, 0.7]


def writer_with_one_trial(root: str) -> tuple[ResultsWriter, object]:
    from types import SimpleNamespace

    variant = Variant({a: getattr(tiny_config(), a) for a in AXES})
    spec = TrialSpec(tiny_config().to_dict(), [variant])
    writer = ResultsWriter(root, spec, "s", ("sst", "para", "sts"), echo=False, min_interval=0,
                           keep="none")  # fmt: skip
    writer.setup()
    trial = SimpleNamespace(trial_id="t1", config={"variant": variant.name})
    return writer, trial


def test_a_failed_results_write_is_one_warning_and_the_last_version_stays(
    bucket, endpoint, capsys
):
    uri = f"s3://{bucket}/sweeps/w"
    writer, trial = writer_with_one_trial(uri)
    result = {"epoch": 1, "epochs_planned": 2, "dev_score": 0.5, "train_seconds": 1.0}
    writer.on_trial_start(0, [], trial)
    writer.on_trial_result(0, [], trial, result)
    endpoint.stop()
    try:
        writer.on_trial_result(0, [], trial, {**result, "epoch": 2, "dev_score": 0.6})
        writer.on_trial_complete(0, [], trial)  # a second failure: no second warning
    finally:
        endpoint.start()
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the results to") == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert read_results(uri)["epochs"].epoch.tolist() == [1]  # the last complete version
    writer.on_experiment_end([])  # the endpoint is back: the pending rows are written
    assert read_results(uri)["epochs"].epoch.tolist() == [1, 2]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("where", ["no such bucket", "unreachable endpoint"])
def test_an_unwritable_results_uri_is_one_line_exit_2_before_any_trial(
    tiny_model, bucket, where, monkeypatch, capsys
):
    results = f"s3://{bucket}/sweeps"
    if where == "no such bucket":
        results = f"s3://{bucket}-missing/sweeps"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert sweep_main(sweep_args(tiny_model, results, "x", "--dry-run")) == 2
    assert f"cannot write to {results}/x" in one_line_error(capsys.readouterr().err)
    # --resume checks the bucket first too
    assert sweep_main(["--resume", "--name", "x", "--results", results]) == 2
    assert f"cannot write to {results}/x" in one_line_error(capsys.readouterr().err)


def test_a_bad_store_timeout_is_one_line_exit_2(tiny_model, bucket, monkeypatch, capsys):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    assert sweep_main(sweep_args(tiny_model, f"s3://{bucket}/r", "x", "--dry-run")) == 2
    assert f"{TIMEOUT_ENV} must be a positive number" in one_line_error(capsys.readouterr().err)


def test_infer_of_a_missing_checkpoint_uri_is_one_line_exit_2(bucket, tmp_path, capsys):
    data = write_sst_file(tmp_path / "sst.csv")
    assert infer_main([f"s3://{bucket}/nothing/checkpoint_000001", str(data)]) == 2
    assert "checkpoint directory does not exist" in one_line_error(capsys.readouterr().err)


# ----------------------------------------------------------------------------- sweeps
def wait_for(condition, driver: Driver, what: str) -> None:
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while not condition():
        if driver.proc.poll() is not None:
            pytest.fail(f"sweep exited early ({driver.proc.returncode}):\n{driver.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{driver.output()}")
        time.sleep(0.2)


def held(claims: Path) -> bool:
    return claims.exists() and any(claims.glob("held-*"))


def snapshot_has_checkpoint(uri: str, trial_id: str) -> bool:
    """Whether Tune's experiment state in the bucket records a checkpoint of ``trial_id``: what
    ``--resume`` restores it from. Tune pickles each trial's checkpoint manager into the JSON
    (as hex), so the checkpoint's directory name is looked for in the decoded bytes."""
    fs, prefix = s3_fs(), uri.removeprefix("s3://") + "/ray"
    states = [i.path for i in fs.get_file_info(pafs.FileSelector(prefix, allow_not_found=True))
              if i.base_name.startswith("experiment_state-")]  # fmt: skip
    if not states:
        return False
    with fs.open_input_stream(max(states)) as f:
        text = f.read().decode()
    try:
        state = json.loads(text)
    except json.JSONDecodeError:  # read while Tune was replacing it: look again
        return False
    for trial, run_metadata in state["trial_data"]:
        if json.loads(trial)["trial_id"] == trial_id:
            blobs = re.findall(r'"value": "([0-9a-f]+)"', run_metadata)
            return any(b"checkpoint_000000" in bytes.fromhex(b) for b in blobs)
    return False


@pytest.mark.slow
def test_a_killed_s3_sweep_resumes_once_and_the_report_and_infer_read_the_bucket(
    tiny_model, bucket, tmp_path
):
    results, claims = f"s3://{bucket}/sweeps", tmp_path / "claims"
    uri = f"{results}/killed"
    argv = sweep_args(tiny_model, results, "killed", "--num-samples", "2", "--epochs", "2",
                      "--max-concurrent", "1", *INJECT)  # fmt: skip
    # the second trial stalls after checkpointing epoch 1 (to the bucket): the driver dies there
    with Driver(argv, faults("none,stall@1", claims), tmp_path / "first.log") as first:
        wait_for(lambda: held(claims), first, "the second trial to stall")
        stalled = (claims / "trial-1").read_text()
        wait_for(lambda: snapshot_has_checkpoint(uri, stalled), first,
                 "Tune's experiment snapshot with the stalled trial's checkpoint")  # fmt: skip
        before = read_results(uri)["trials"].set_index("trial_id")
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = pd.Timestamp.now(tz="UTC")
    (done_id,) = before.index[before.status == "terminated"]  # written when it ended
    stalled_id = stalled

    resume = ["--resume", "--name", "killed", "--results", results]
    with Driver(resume, {}, tmp_path / "resume.log") as second:
        assert second.proc.wait(timeout=SWEEP_TIMEOUT_S) == 0, second.output()
    after = read_results(uri)
    trials = after["trials"].set_index("trial_id")
    assert sorted(trials.index) == sorted([done_id, stalled_id])  # each trial exactly once
    assert set(trials.status) == {"terminated"} and set(trials.epochs_done) == {2}
    for col in ("started_at", "train_seconds", "updated_at"):  # finished: not trained again
        assert trials.loc[done_id, col] == before.loc[done_id, col], col
    epochs = after["epochs"]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    resumed = epochs[epochs.trial_id == stalled_id].set_index("epoch").reported_at
    assert resumed[2] > killed_at and not (resumed.get(1, killed_at) > killed_at)  # from epoch 1
    assert not Path(uri).exists()  # nothing local: the URI is not a path

    out = tmp_path / "report"
    assert report_main([uri, "--out", str(out), "--quiet"]) == 0
    assert (out / "report.md").exists()
    checkpoint = trials.loc[stalled_id, "checkpoint"]
    assert checkpoint.startswith(f"{uri}/ray/")
    data = write_sst_file(tmp_path / "sst.csv")
    assert infer_main([checkpoint, str(data), "--task", "sst", "--max-examples", "4"]) == 0


@pytest.mark.slow
def test_an_endpoint_stopped_mid_sweep_fails_the_trial_clearly_and_loses_nothing_written(
    tiny_model, bucket, endpoint, tmp_path
):
    results, claims = f"s3://{bucket}/sweeps", tmp_path / "claims"
    uri = f"{results}/cut"
    argv = sweep_args(tiny_model, results, "cut", "--num-samples", "2", "--epochs", "2",
                      "--max-concurrent", "1", *INJECT)  # fmt: skip
    with Driver(argv, faults("none,hold@1", claims), tmp_path / "cut.log") as driver:
        wait_for(lambda: held(claims), driver, "the second trial to hold")
        before = read_results(uri)
        endpoint.stop()
        try:
            (claims / RELEASE).touch()  # epoch 2 trains; its checkpoint cannot be saved
            rc = driver.proc.wait(timeout=SWEEP_TIMEOUT_S)
        finally:
            endpoint.start()
        output = driver.output()
    assert rc == 1, output
    assert f"warning: cannot write the results to {uri}" in output
    assert f"error: cannot reach the results at {uri}" in output and "--resume" in output
    stalled_id = (claims / "trial-1").read_text()
    assert any(f"{stalled_id}] error: " in line for line in output.splitlines()), output
    # what was written before the endpoint went away is all there
    after = read_results(uri)
    done = after["trials"].set_index("trial_id").loc[before["trials"].trial_id]
    assert (done.status == before["trials"].set_index("trial_id").status).all()
    assert len(after["epochs"]) >= len(before["epochs"]) == 2
    finished = done[done.status == "terminated"].iloc[0]
    cfg, _, _ = load_model(finished.checkpoint)
    assert cfg.tasks
    infos = s3_fs().get_file_info(pafs.FileSelector(f"{bucket}/sweeps/cut/ray", recursive=True))
    kept = {i.path.rsplit("/", 1)[0] for i in infos if i.base_name == CHECKPOINT_FILE}
    assert len(kept) >= 2  # the finished trial's and the held trial's epoch-1 checkpoint
