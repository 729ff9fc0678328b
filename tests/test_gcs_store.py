"""Sweeps, the report and ``berter infer`` on a ``gs://`` bucket: a local GCS emulator.

``gcp-storage-emulator`` (in the dev extra) serves the GCS JSON API on a free loopback port
for this module; ``STORAGE_EMULATOR_HOST`` points berter.objstore at it, as it points Google's
own client libraries. The S3 tests (tests/test_object_store.py) cover kills, resumes and a lost
endpoint; here the same paths run once on the other scheme, whose filesystem pyarrow builds
differently (no per-request timeout, its own retry limit).
"""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from test_infer import write_sst_file
from test_object_store import one_line_error, wait_for_port
from test_reliability import SWEEP_TIMEOUT_S, free_port, sweep_args

from berter.infer import main as infer_main
from berter.objstore import GCS_EMULATOR_ENV, TIMEOUT_ENV
from berter.report.cli import main as report_main
from berter.sweep.cli import main as sweep_main
from berter.sweep.store import Store, read_results

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = shutil.which("gcp-storage-emulator")
pytestmark = pytest.mark.skipif(EMULATOR is None, reason="needs gcp-storage-emulator (dev extra)")
# The emulator serves one connection at a time (http.server.HTTPServer): a client's idle
# keep-alive connection (pyarrow's pool, the sweep's workers) then stalls every other request
# until it times out. Run it with a thread per connection instead.
THREADED = (
    "import sys, http.server as h; h.HTTPServer = h.ThreadingHTTPServer; "
    "from gcp_storage_emulator.__main__ import main; sys.argv[0] = 'gcp-storage-emulator'; "
    "sys.exit(main())"
)


@pytest.fixture(scope="module")
def emulator() -> str:
    """The emulator on a free port for the module; its host:port."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", THREADED, "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, server)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def bucket(emulator, monkeypatch) -> str:
    """A new bucket, and the environment that points this process and the sweep's at it."""
    monkeypatch.setenv(GCS_EMULATOR_ENV, emulator)
    monkeypatch.setenv(TIMEOUT_ENV, "3")
    name = f"b-{uuid.uuid4().hex[:12]}"
    fs = pafs.GcsFileSystem(anonymous=True, endpoint_override=emulator, scheme="http",
                            project_id="test")  # fmt: skip
    fs.create_dir(name)
    return name


def test_results_tables_round_trip_through_a_gs_bucket(bucket):
    uri = f"gs://{bucket}/sweeps/t"
    store = Store(uri)
    table = pa.table({"trial_id": ["a", "b"], "dev_score": [0.5, 0.7]})
    store.write_table("trials.parquet", table)
    assert store.read_table("trials.parquet").equals(table)
    assert read_results(uri, must_exist=True)["trials"].dev_score.tolist() == [0.5, 0.7]


@pytest.mark.parametrize("where", ["no such bucket", "unreachable endpoint"])
def test_an_unwritable_gs_uri_is_one_line_exit_2_before_any_trial(
    tiny_model, bucket, where, monkeypatch, capsys
):
    results = f"gs://{bucket}/sweeps"
    if where == "no such bucket":
        results = f"gs://{bucket}-missing/sweeps"
    else:
        monkeypatch.setenv(GCS_EMULATOR_ENV, f"127.0.0.1:{free_port()}")
    assert sweep_main(sweep_args(tiny_model, results, "x", "--dry-run")) == 2
    assert f"cannot write to {results}/x" in one_line_error(capsys.readouterr().err)


@pytest.mark.slow
def test_a_sweep_on_gs_writes_results_and_checkpoints_that_the_report_and_infer_read(
    tiny_model, bucket, tmp_path, monkeypatch
):
    # the emulator is one Python process: on a loaded machine a request can stall for seconds,
    # which the 3 s limit of the bad-input tests would turn into a failed run
    monkeypatch.setenv(TIMEOUT_ENV, "20")
    uri = f"gs://{bucket}/sweeps/g"
    argv = sweep_args(tiny_model, f"gs://{bucket}/sweeps", "g", "--num-samples", "1",
                      "--epochs", "1")  # fmt: skip
    done = subprocess.run([sys.executable, "sweeps/run.py", *argv], cwd=ROOT, env=os.environ,
                          capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tables = read_results(uri)
    trials = tables["trials"]
    assert trials.status.tolist() == ["terminated"] and trials.epochs_done.tolist() == [1]
    assert tables["epochs"].epoch.tolist() == [1]
    checkpoint = trials.checkpoint.iloc[0]
    assert checkpoint.startswith(f"{uri}/ray/")
    out = tmp_path / "report"
    assert report_main([uri, "--out", str(out), "--quiet"]) == 0
    assert (out / "report.md").exists()
    data = write_sst_file(tmp_path / "sst.csv")
    assert infer_main([checkpoint, str(data), "--task", "sst", "--max-examples", "4"]) == 0
    assert not Path(uri).exists()  # nothing local: the URI is not a path
