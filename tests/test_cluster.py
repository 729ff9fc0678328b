"""The Ray cluster launcher configs: valid for `ray up`, GPU workers, safe network exposure.

`ray up` needs a cloud account; these tests check what can be checked offline: the file
against Ray's own launcher schema (as written, and after Ray fills in its provider
defaults), the images and the Ray they pin, the workers' credentials and CUDA check, and
the project-specific requirements.
"""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
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


def workers(cfg: dict) -> dict:
    return {n: t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}


def header_json(text: str, name: str) -> dict:
    """The JSON document that follows `name` in the file's header comment."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and name in line)
    body = [line.lstrip("#").strip() for line in lines[start + 1 :]]
    doc = ""
    for line in body[next(i for i, b in enumerate(body) if b.startswith("{")) :]:
        doc += line
        try:
            return json.loads(doc)
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON document after {name}")


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
def test_file_as_written_passes_the_schema_shipped_with_ray(name):
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    cfg = load(name)
    jsonschema.validate(cfg, schema)
    broken = copy.deepcopy(cfg)
    broken["docker"]["worker_images"] = broken["docker"].pop("worker_image")  # a typo
    with pytest.raises(jsonschema.ValidationError, match="worker_images"):
        jsonschema.validate(broken, schema)


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


def image_tag(image: str) -> tuple[str, str, str]:
    """rayproject/ray:2.60.0-py311-cu128 -> ("2.60.0", "py311", "cu128")."""
    repo, tag = image.split(":")
    assert repo == "rayproject/ray"
    version, python, platform = tag.split("-")
    return version, python, platform


@pytest.mark.parametrize("name", CONFIGS)
def test_nodes_run_rays_image_of_the_installed_ray_minor_python_311_and_cuda_on_workers(name):
    docker = load(name)["docker"]
    head, worker = image_tag(docker["head_image"]), image_tag(docker["worker_image"])
    installed = ray.__version__.split(".")[:2]
    for version, python, _ in (head, worker):
        assert version.split(".")[:2] == installed and python == "py311"
    assert head[2] == "cpu" and re.fullmatch(r"cu\d{3}", worker[2])
    assert "--gpus all" in docker["worker_run_options"]


@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_exactly_the_images_ray_which_pyproject_admits(name):
    cfg = load(name)
    version = image_tag(cfg["docker"]["worker_image"])[0]
    assert image_tag(cfg["docker"]["head_image"])[0] == version
    assert any(f'"ray[default,tune]=={version}"' in c for c in cfg["setup_commands"])
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pin = next(Requirement(d) for d in project["dependencies"] if d.startswith("ray["))
    assert "tune" in pin.extras
    major, minor = (int(x) for x in version.split(".")[:2])
    assert pin.specifier.contains(version) and pin.specifier.contains(ray.__version__)
    # one minor only: the searcher subclasses OptunaSearch's private state
    assert not pin.specifier.contains(f"{major}.{minor + 1}.0")
    assert not pin.specifier.contains(f"{major}.{minor - 1}.0")


@pytest.mark.parametrize("name", CONFIGS)
def test_workers_install_the_torch_build_for_the_images_cuda(name):
    cfg = load(name)
    cuda = image_tag(cfg["docker"]["worker_image"])[2]
    torch_cmds = [c for c in cfg["worker_setup_commands"] if re.search(r"pip install .*torch", c)]
    assert torch_cmds == [
        f"pip install -q torch --index-url https://download.pytorch.org/whl/{cuda}"
    ]
    head_torch = [c for c in cfg["head_setup_commands"] if re.search(r"pip install .*torch", c)]
    assert head_torch and all(c.endswith("/whl/cpu") for c in head_torch)


def run_with_fake_torch(command: str, tmp_path: Path, cuda: bool) -> subprocess.CompletedProcess:
    """Run a shell command whose `python` imports a torch that does or does not see CUDA."""
    fake = tmp_path / ("cuda" if cuda else "cpu") / "torch"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(
        "from types import SimpleNamespace\n"
        f"__version__ = '0.0+fake'\nversion = SimpleNamespace(cuda={'12.8' if cuda else None!r})\n"
        f"cuda = SimpleNamespace(is_available=lambda: {cuda})\n"
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(fake.parent),
    }
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_worker_setup_ends_with_a_check_that_fails_without_cuda(name, tmp_path):
    """The commands the autoscaler runs on each worker type (global setup, then worker setup,
    unless the type overrides them) end with a check that exits non-zero with a message
    unless torch sees CUDA."""
    prepared = prepare_config(load(name))
    for node_type in workers(prepared).values():
        cmds = node_type.get("worker_setup_commands", prepared["worker_setup_commands"])
        no_gpu = run_with_fake_torch(cmds[-1], tmp_path, cuda=False)
        assert no_gpu.returncode != 0
        assert no_gpu.stderr.strip() == (
            "no CUDA on this worker: torch 0.0+fake, built for CUDA None"
        )
        assert run_with_fake_torch(cmds[-1], tmp_path, cuda=True).returncode == 0


def test_aws_hosts_are_a_current_dlami_looked_up_by_name_which_ray_keeps():
    from ray.autoscaler._private.aws.config import _check_ami

    cfg = prepare_config(load("cluster.yaml"))
    ssm = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
    for node_type in cfg["available_node_types"].values():
        image = node_type["node_config"]["ImageId"]
        assert image.startswith(ssm) and re.search(r"-ubuntu-2[24]\.04/latest/ami-id$", image)
    kept = copy.deepcopy(cfg)
    _check_ami(kept)  # Ray's own step that swaps "latest_dlami" for its Ubuntu 18.04 DLAMI
    assert kept["available_node_types"] == cfg["available_node_types"]
    old = copy.deepcopy(cfg)
    old["available_node_types"]["gpu_worker"]["node_config"]["ImageId"] = "latest_dlami"
    _check_ami(old)
    assert old["available_node_types"]["gpu_worker"]["node_config"]["ImageId"].startswith("ami-")


def test_gcp_hosts_are_a_deep_learning_vm_family_with_a_driver_for_the_images_cuda():
    cfg = load("cluster-gcp.yaml")
    cuda = image_tag(cfg["docker"]["worker_image"])[2]
    family = "projects/deeplearning-platform-release/global/images/family/common-"
    for node_type in cfg["available_node_types"].values():
        (disk,) = node_type["node_config"]["disks"]
        image = disk["initializeParams"]["sourceImage"]
        assert image.startswith(f"{family}{cuda}-ubuntu-2") and "-nvidia-" in image
    for node_type in workers(cfg).values():
        assert {"onHostMaintenance": "TERMINATE"} in node_type["node_config"]["scheduling"]


def test_aws_workers_have_an_instance_profile_with_the_documented_minimum_s3_policy():
    text = (ROOT / "cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    for node_type in workers(cfg).values():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::ACCOUNT_ID:instance-profile/berter-worker", arn)
    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"]["Arn"].endswith(":instance-profile/berter-head")
    s3 = header_json(text, "berter-s3.json")["Statement"]
    assert [(st["Action"], st["Resource"]) for st in s3] == [
        ("s3:ListBucket", "arn:aws:s3:::YOUR-BUCKET"),
        (["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "arn:aws:s3:::YOUR-BUCKET/berter/*"),
    ]
    assert all(st["Effect"] == "Allow" for st in s3)
    launch = {
        st["Action"]: st["Resource"] for st in header_json(text, "berter-launch.json")["Statement"]
    }
    assert launch["iam:PassRole"] == "arn:aws:iam::ACCOUNT_ID:role/berter-worker"
    assert "/aws/service/deeplearning/" in launch["ssm:GetParameters"]
    trust = header_json(text, "ec2-trust.json")["Statement"][0]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert "for R in berter-head berter-worker" in text and "--role-name berter-head" in text


def test_gcp_workers_run_as_a_service_account_with_object_admin_on_the_bucket_only():
    text = (ROOT / "cluster-gcp.yaml").read_text()
    cfg = yaml.safe_load(text)
    email = "berter-worker@YOUR-PROJECT.iam.gserviceaccount.com"
    for node_type in workers(cfg).values():
        (account,) = node_type["node_config"]["serviceAccounts"]
        assert account["email"] == email and account["scopes"]
    binding = re.search(
        r"gcloud storage buckets add-iam-policy-binding gs://YOUR-BUCKET \\\n"
        r"#\s+--member serviceAccount:(\S+) \\\n#\s+--role (\S+)\n",
        text,
    )
    assert binding and binding.groups() == (email, "roles/storage.objectAdmin")
    assert "gcloud iam service-accounts create berter-worker" in text
    assert "projects add-iam-policy-binding" not in text  # no project-wide grant
