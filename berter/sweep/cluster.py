"""What a Ray cluster has and can add: the sweep's GPU and concurrency defaults on a cluster.

A sweep joined to a cluster (``--address``) sizes itself by the nodes the cluster has now
*and* the worker nodes its autoscaler may still start: a `ray up` cluster begins as a
CPU-only head, so its resources alone (``ray.cluster_resources()``) would say "no GPU, one
trial at a time", the trials would train on the CPU and the autoscaler would start one
worker. :func:`read_cluster` reads

- the alive nodes and their resources (``ray.nodes()``);
- the worker node types the autoscaler can add, with their resources and counts, from the
  first of: the cluster config the GCS holds (``ray._private.state.state
  .get_cluster_config()``: KubeRay and other managed clusters report it), the autoscaler
  config file of this cluster's autoscaler (the ``--autoscaling-config`` of the monitor
  process whose pid the autoscaler writes to the GCS, ``__autoscaling_status``: readable on
  the head node, where `ray exec` runs the sweep), and ``~/ray_bootstrap_config.yaml`` (what
  `ray up` leaves on the head; Ray Tune's own test for such a cluster). Through Ray Client
  (``ray://``) none of them is readable and only the alive nodes count.

:class:`Cluster` then answers the two defaults: a GPU per trial when some node has or some
node type brings a GPU, and as many trials at once as fit the cluster scaled up to its
limits (or as it is now, if that is more).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the config on the head
STATUS_KEY = "__autoscaling_status"  # ray_constants.DEBUG_AUTOSCALING_STATUS: the monitor's pid
CONFIG_FLAG = "--autoscaling-config"
HEAD_RESOURCE = "node:__internal_head__"  # the head node's marker resource
UNBOUNDED = 10**6  # "no limit" in counts of nodes: the sweep's --num-samples bounds it anyway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeType:
    """A kind of worker node the autoscaler can start."""

    name: str
    resources: dict[str, float]
    max_count: int | None  # None: no limit of its own (the cluster's max_workers still holds)


@dataclass(frozen=True)
class Cluster:
    """The alive nodes' resources and the worker node types that can be added."""

    nodes: list[dict[str, float]]
    node_types: list[NodeType]
    max_workers: int | None = None  # worker nodes at most, all types together; None: no cap
    source: str = ""  # where node_types came from (a note names it)

    def has_gpus(self) -> bool:
        """Whether a node has a GPU now or a node type the autoscaler can add brings one."""
        return any(n.get("GPU", 0) > 0 for n in self.nodes) or any(
            t.resources.get("GPU", 0) > 0 and t.max_count != 0 for t in self.node_types
        )

    def trials_at_once(self, cpus: float, gpus: float) -> int:
        """Trials of ``cpus`` CPUs and ``gpus`` GPUs that fit at once: on the nodes as they
        are, or on the cluster scaled up (the head, every node type at its count, within
        max_workers, node types holding the most trials first), whichever is more; at
        least one."""
        now = sum(fits(n, cpus, gpus) for n in self.nodes)
        scaled = sum(fits(n, cpus, gpus) for n in self.nodes if HEAD_RESOURCE in n)
        room = UNBOUNDED if self.max_workers is None else self.max_workers
        for t in sorted(self.node_types, key=lambda t: -fits(t.resources, cpus, gpus)):
            count = min(room, UNBOUNDED if t.max_count is None else t.max_count)
            scaled += count * fits(t.resources, cpus, gpus)
            room -= count
        return max(1, now, scaled)

    def describe(self) -> str:
        """The node types, for a note: ``gpu_worker: up to 2 x 4 CPU 1 GPU``."""
        if not self.node_types:
            return "no autoscaler node types found (current nodes only)"
        shown = []
        for t in self.node_types:
            count = "any number" if t.max_count is None else f"up to {t.max_count}"
            res = " ".join(f"{t.resources[k]:g} {k}" for k in ("CPU", "GPU") if k in t.resources)
            shown.append(f"{t.name}: {count} x {res or 'no CPU/GPU'}")
        return "; ".join(shown) + (f" (from {self.source})" if self.source else "")


def fits(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """Trials of ``cpus`` CPUs and ``gpus`` GPUs one node of ``resources`` holds."""
    eps = 1e-9  # 0.1 + 0.2: Ray's resources are floats
    n = math.floor(resources.get("CPU", 0) / cpus + eps)
    if gpus > 0:
        n = min(n, math.floor(resources.get("GPU", 0) / gpus + eps))
    return n


# ----------------------------------------------------------------------------- reading it
def read_cluster() -> Cluster:
    """The joined cluster (``ray.init`` done): its alive nodes and addable node types."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    for reader in (_from_gcs, _from_monitor, _from_bootstrap):
        try:
            found = reader()
        except Exception as exc:  # a source that is not there or not readable: the next one
            log.debug("%s: %s", reader.__name__, exc)
            continue
        if found is not None:
            types, max_workers, source = found
            return Cluster(nodes, types, max_workers, source)
    return Cluster(nodes, [])


def _from_gcs() -> tuple[list[NodeType], int | None, str] | None:
    """The cluster config the GCS holds (reported by KubeRay and other managed clusters)."""
    from ray._private.state import state

    config = state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    types = [
        NodeType(g.name, dict(g.resources), None if g.max_count == -1 else int(g.max_count))
        for g in config.node_group_configs
    ]
    return types, None, "the GCS cluster config"


def _from_monitor() -> tuple[list[NodeType], int | None, str] | None:
    """The config file of this cluster's autoscaler, when it runs on this machine."""
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(STATUS_KEY)
    if not status:
        return None
    pid = json.loads(status).get("monitor_pid")
    args = Path(f"/proc/{int(pid)}/cmdline").read_bytes().decode().split("\0")
    path = next(
        (a.split("=", 1)[1] if "=" in a else args[i + 1])
        for i, a in enumerate(args)
        if a.startswith(CONFIG_FLAG)
    )
    return *node_types(_load(Path(path))), path


def _from_bootstrap() -> tuple[list[NodeType], int | None, str] | None:
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if not path.exists():
        return None
    return *node_types(_load(path)), BOOTSTRAP_CONFIG


def _load(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def node_types(config: dict[str, Any]) -> tuple[list[NodeType], int | None]:
    """The worker node types of a cluster launcher / autoscaler config (cluster.yaml's
    format), and its ``max_workers``."""
    cap = config.get("max_workers")
    head = config.get("head_node_type")
    types = [
        NodeType(name, dict(t.get("resources") or {}), t.get("max_workers", cap))
        for name, t in (config.get("available_node_types") or {}).items()
        if name != head
    ]
    return types, cap
