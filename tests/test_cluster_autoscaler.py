"""A sweep on Ray's own autoscaler: it sizes itself by the workers the cluster can add, and they come and go.

Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``, the provider behind
``ray.cluster_utils.AutoscalingCluster``) runs the real autoscaler, which starts and stops
"nodes" as local raylets. The head has no CPU and no GPU, as cluster.yaml's; the worker
node types are cluster.yaml's (their CPUs and GPUs, min 0, max 2). Their GPUs are fake:
tests/fakegpu.py lets a trial that holds one train on the CPU, and records where each trial
ran. ``AutoscalingCluster.start`` itself runs ``ray stop --force`` (every Ray process of
the machine) and needs a file the installed Ray lacks, so the head is started here, in its
own temp dir and process group, on a free port with an auth token, and thrown away with
SIGKILL like tests/test_reliability.py's cluster.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch
import yaml
from fakegpu import PLACEMENTS_ENV, placements, runtime_env_var
from faults import FAULT_DIR_ENV, FAULT_ENV
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

from berter.sweep.cli import main as sweep_main
from berter.sweep.cluster import Cluster, NodeType, node_types
from berter.sweep.store import read_results
from berter.sweep.trainable import NoCudaError, trial_device

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 240  # generous: the machine may be shared
IDLE_TIMEOUT_MINUTES = 0.05  # 3 s: idle workers go while the test watches
FAKE_NODE_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # the fake provider's node id, per node
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type (its own node)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_path() -> str:
    """tests/ and the project first: the driver and every node's workers import them."""
    return os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)


def worker_types(name: str, max_workers: int) -> dict:
    """The worker node types of a launcher config, as the fake provider takes them: their
    CPU and GPU resources, min 0, at most ``max_workers`` each."""
    cfg = yaml.safe_load((ROOT / name).read_text())
    return {
        n: {
            "resources": {k: v for k, v in t["resources"].items() if k in ("CPU", "GPU")},
            "node_config": {},
            "min_workers": 0,
            "max_workers": max_workers,
        }  # fmt: skip
        for n, t in cfg["available_node_types"].items()
        if n != cfg["head_node_type"]
    }


class FakeAutoscalingCluster:
    """A head node (no CPU, no GPU) whose autoscaler adds ``workers`` node types as local
    raylets. Every process it starts, fake worker nodes included, is in the head's process
    group."""

    def __init__(self, workers: dict, env: dict[str, str]):
        self.temp = Path(tempfile.mkdtemp(prefix="as", dir="/tmp"))  # short: socket paths
        self.port = free_port()
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), **env}
        self.config = {
            "cluster_name": "fake", "max_workers": 2, "upscaling_speed": 1.0,
            "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
            "provider": {
                "type": "fake_multinode", "use_node_id_as_ip": True,
                "disable_node_updaters": True, "disable_launch_config_check": True,
                "gcs_address": self.address,
            },
            "available_node_types": {
                HEAD_TYPE: {"resources": {"CPU": 0, "GPU": 0}, "node_config": {}, "max_workers": 0},
                **workers,
            },
            "head_node_type": HEAD_TYPE, "auth": {}, "docker": {}, "file_mounts": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [], "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        }  # fmt: skip
        self.head: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.temp / "autoscaling.json"
        config.write_text(json.dumps(self.config))
        args = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            f"--port={self.port}", "--temp-dir", str(self.temp), "--node-ip-address",
            "127.0.0.1", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
            "--disable-usage-stats", f"--autoscaling-config={config}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        ]  # fmt: skip
        env = {
            **os.environ, **self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "PYTHONPATH": python_path(), "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }  # fmt: skip
        with (self.temp / "head.log").open("w") as log:
            self.head = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            assert self.head.poll() is None, (self.temp / "head.log").read_text()
            time.sleep(0.2)
        pytest.fail("the Ray head did not start")

    def worker_nodes(self) -> dict[str, list[int]]:
        """The fake worker nodes with a live process: node id -> pids."""
        nodes: dict[str, list[int]] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.getsid(int(proc.name)) != self.head.pid:
                    continue
                environ = (proc / "environ").read_bytes().split(b"\0")
            except (OSError, ProcessLookupError):
                continue
            for entry in environ:
                if entry.startswith(f"{FAKE_NODE_ENV}=".encode()):
                    nodes.setdefault(entry.split(b"=", 1)[1].decode(), []).append(int(proc.name))
        nodes.pop(FAKE_HEAD_NODE_ID, None)  # the head's raylet has its id too
        return nodes

    def kill_node(self, node_id: str) -> None:
        """SIGKILL a worker node's raylet, agents and workers: a lost machine."""
        for pid in self.worker_nodes().get(node_id, []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def monitor_log(self) -> str:
        logs = self.temp / "session_latest" / "logs"
        return "".join(p.read_text(errors="replace") for p in logs.glob("monitor*"))

    def stop(self) -> None:
        """SIGKILL the head's process group: the head, its autoscaler and every fake node."""
        if self.head is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.head.pid, signal.SIGKILL)
            self.head.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


def wait_for(
    what: str, done, driver: subprocess.Popen | None, log: Path, timeout: float = TIMEOUT_S
):
    deadline = time.monotonic() + timeout
    while not (found := done()):
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"sweep exited ({driver.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.2)
    return found


def stalled_checkpointed(sweep_dir: Path, claims: Path) -> str | None:
    """The stalled trial's id once the driver has its epoch-1 checkpoint (the results name it)."""
    claim = claims / "trial-0"
    if not claim.exists() or not (sweep_dir / "trials.parquet").exists():
        return None
    trial_id = claim.read_text()
    trials = read_results(sweep_dir)["trials"].set_index("trial_id")
    if trial_id in trials.index and isinstance(trials.loc[trial_id, "checkpoint"], str):
        return trial_id
    return None


# ----------------------------------------------------------------------------- the sizing rules
def test_cluster_yaml_worker_types_are_read_with_their_gpus_and_counts():
    types, cap = node_types(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    assert cap == 8
    assert types == [NodeType("gpu_worker", {"CPU": 4, "GPU": 1}, 8)]


def test_a_cpu_head_that_can_add_gpu_workers_runs_gpu_trials_on_all_of_them():
    head = {"CPU": 0.0, "node:__internal_head__": 1.0}
    cluster = Cluster([head], [NodeType("gpu_worker", {"CPU": 4, "GPU": 1}, 8)], max_workers=8)
    assert cluster.has_gpus()
    assert cluster.trials_at_once(cpus=1, gpus=1) == 8  # one GPU trial per worker
    assert cluster.trials_at_once(cpus=1, gpus=0.5) == 16
    assert cluster.trials_at_once(cpus=1, gpus=0) == 32  # CPU trials: four per worker
    capped = Cluster([head], [NodeType("gpu_worker", {"CPU": 4, "GPU": 1}, 8)], max_workers=3)
    assert capped.trials_at_once(cpus=1, gpus=1) == 3  # the cluster's max_workers binds


def test_a_cluster_without_gpu_nodes_or_types_gets_cpu_trials_sized_by_its_nodes():
    nodes = [{"CPU": 4.0, "node:__internal_head__": 1.0}, {"CPU": 2.0}]
    cluster = Cluster(nodes, [NodeType("cpu", {"CPU": 8}, 0)])  # a type it may not add
    assert not cluster.has_gpus()
    assert cluster.trials_at_once(cpus=2, gpus=0) == 3  # 2 on the head, 1 on the worker
    assert Cluster(nodes, []).trials_at_once(cpus=8, gpus=0) == 1  # at least one


def test_node_types_that_hold_the_most_trials_fill_max_workers_first():
    types = [NodeType("small", {"CPU": 2, "GPU": 1}, 4), NodeType("big", {"CPU": 8, "GPU": 4}, 2)]
    cluster = Cluster([{"node:__internal_head__": 1.0}], types, max_workers=3)
    assert cluster.trials_at_once(cpus=1, gpus=1) == 2 * 4 + 1 * 1


def test_on_a_cluster_the_dry_run_leaves_the_gpu_default_to_the_cluster(
    tiny_model, tmp_path, capsys
):
    argv = ["--data", "demo", "--model", tiny_model, "--search", "lr", "--num-samples", "5",
            "--results", str(tmp_path), "--address", "ray://nowhere:10001", "--dry-run"]  # fmt: skip
    assert sweep_main(argv) == 0
    out = capsys.readouterr().out
    assert "1 CPU, 1 GPU if the cluster has or can add GPU workers, else none" in out
    assert "counting the workers its autoscaler can add), at most 5" in out
    assert sweep_main([*argv, "--gpus-per-trial", "0.5"]) == 0
    assert "resources per trial: 1 CPU, 0.5 GPU;" in capsys.readouterr().out


# ----------------------------------------------------------------------------- no silent CPU
def test_a_trial_holding_a_gpu_where_torch_sees_no_cuda_stops_with_one_line(monkeypatch):
    trial = SimpleNamespace(trial_resources=SimpleNamespace(required_resources={"CPU": 2}))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert trial_device(trial) == ("cpu", 2)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    with pytest.raises(NoCudaError) as err:
        trial_device(trial)
    message = str(err.value)
    assert "\n" not in message and "holds GPU 3" in message and "--gpus-per-trial 0" in message


# ----------------------------------------------------------------------------- the real thing
@pytest.mark.slow
def test_autoscaler_adds_gpu_workers_for_the_sweep_a_lost_one_is_resumed_and_idle_ones_go(
    tiny_model, tmp_path
):
    claims, records = tmp_path / "claims", tmp_path / "placements"
    # trials run on the worker nodes, whose processes inherit the head's environment: the
    # first trial to train stalls after checkpointing epoch 1 (tests/faults.py)
    cluster = FakeAutoscalingCluster(
        worker_types("cluster.yaml", max_workers=2),
        {FAULT_ENV: "stall@1", FAULT_DIR_ENV: str(claims), PLACEMENTS_ENV: str(records)},
    )
    sweep_dir, log = tmp_path / "auto", tmp_path / "driver.log"
    argv = [
        "--data", "demo", "--model", tiny_model, "--max-train", "24", "--max-dev", "16",
        "--max-len", "32", "--results", str(tmp_path), "--name", "auto", "--search", "lr",
        "--scheduler", "fifo", "--num-samples", "3", "--epochs", "2", "--max-failures", "1",
        "--address", cluster.address, "--callback", "faults:FaultInjector",
    ]  # fmt: skip
    env = {**os.environ, **cluster.env, **runtime_env_var(), "PYTHONPATH": python_path()}
    try:
        cluster.start()
        assert cluster.worker_nodes() == {}  # min 0: nothing until the sweep asks
        with log.open("w") as out:
            driver = subprocess.Popen(
                [sys.executable, "sweeps/run.py", *argv], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            stalled = wait_for(
                "the stalled trial's checkpoint", lambda: stalled_checkpointed(sweep_dir, claims),
                driver, log,
            )  # fmt: skip
            lost = next(r["node_id"] for r in placements(records) if r["trial_id"] == stalled)
            before = read_results(sweep_dir)["epochs"].set_index(["trial_id", "epoch"])
            cluster.kill_node(lost)
            assert driver.wait(timeout=TIMEOUT_S) == 0, log.read_text()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        used = {r["node_id"] for r in placements(records)}
        wait_for("the idle workers to go", lambda: not cluster.worker_nodes(), None, log)
        monitor = cluster.monitor_log()
    finally:
        cluster.stop()

    output = log.read_text()
    # the defaults came from the node types the autoscaler can add, not the CPU-less head
    assert "per trial 1 CPU 1 GPU, up to 2 at once" in output, output
    assert "gpu_worker: up to 2 x 4 CPU 1 GPU" in output
    runs = placements(records)
    assert runs and all(r["gpus"] for r in runs)  # a GPU each
    assert all(r["no_cuda"] for r in runs) or torch.cuda.is_available()  # refused: a fake one
    assert FAKE_HEAD_NODE_ID not in used and len(used) >= 2  # on the workers it added
    trials = read_results(sweep_dir)["trials"].set_index("trial_id")
    assert len(trials) == 3 and set(trials.status) == {"terminated"}
    assert (trials.epochs_done == 2).all()
    # the stalled trial lost its node and went on from its epoch-1 checkpoint on another one
    assert "retrying from its last checkpoint" in output
    restarts = [r["node_id"] for r in runs if r["trial_id"] == stalled]
    assert len(restarts) == 2 and restarts[0] == lost and restarts[1] != lost
    epochs = read_results(sweep_dir)["epochs"].set_index(["trial_id", "epoch"]).reported_at
    assert epochs[(stalled, 1)] == before.reported_at[(stalled, 1)]  # not trained again
    assert "nodes of type gpu_worker (idle)" in monitor  # the autoscaler removed them as idle
