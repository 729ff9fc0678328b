"""The Ray cluster launcher configs: valid for `ray up`, GPU workers, safe network exposure.

`ray up` needs a cloud account; these tests check what can be checked offline: the file
against Ray's own launcher schema (after Ray fills in its provider defaults), and the
project-specific requirements.
"""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-gcp.yaml"]
REQUIRED = [
    "cluster_name", "max_workers", "provider", "auth", "available_node_types",
    "head_node_type", "file_mounts", "setup_commands", "head_start_ray_commands",
    "worker_start_ray_commands",
]  # fmt: skip


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_rays_launcher_schema(name):
    cfg = load(name)
    assert not [k for k in REQUIRED if k not in cfg]
    validate_config(prepare_config(copy.deepcopy(cfg)))
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["gpu_worker"]["resources"] = "GPU"
    with pytest.raises(Exception, match="not of type"):  # the check does bite
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", CONFIGS)
def test_cpu_head_and_autoscaling_gpu_workers(name):
    cfg = load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert workers and all(w["resources"]["GPU"] >= 1 for w in workers)
    assert all(w["min_workers"] == 0 < w["max_workers"] <= cfg["max_workers"] for w in workers)


@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_torch_then_the_mounted_project_with_its_data(name):
    cfg = load(name)
    mounts = cfg["file_mounts"]
    project = next(remote for remote, local in mounts.items() if local == ".")
    assert any(local.endswith("data") for local in mounts.values())
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = cfg[key]
        torch_at = next(i for i, c in enumerate(cmds) if "pip install" in c and "torch" in c)
        project_at = next(i for i, c in enumerate(cmds) if f"pip install -q -e {project}" in c)
        assert torch_at < project_at
    import ray

    assert any(f"ray[default,tune]=={ray.__version__}" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_and_client_ports_are_not_exposed(name):
    cfg = load(name)
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "ray-client-server-port" not in head_start
    assert "0.0.0.0/0" not in yaml.safe_dump(cfg)  # no rule opens anything to the internet


def test_aws_nodes_use_a_security_group_that_allows_only_ssh_from_you():
    cfg = load("cluster.yaml")
    groups = {
        tuple(t["node_config"]["SecurityGroupIds"]) for t in cfg["available_node_types"].values()
    }
    assert len(groups) == 1  # one group for all nodes, created as documented in the header
    text = (ROOT / "cluster.yaml").read_text()
    assert "--port 22 --cidr $MY_IP/32" in text and "--source-group $SG" in text
    assert "ray dashboard cluster.yaml" in text
