"""Several KRaft nodes on loopback (replication factor 3), for the fault tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.kafka.broker import LocalBroker, launch, stop_broker, wait_ready
from tools.kafka.broker_config import new_cluster_id
from tools.kafka.processes import free_port


@dataclass
class LocalCluster:
    """Several KRaft nodes (each broker and controller) on loopback, one data dir each."""

    brokers: list[LocalBroker]
    ports: list[int]
    controller_ports: list[int]
    cluster_id: str

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)


def _cluster_config(node: int, cluster: LocalCluster, extra: dict[str, str] | None
                    ) -> dict[str, str]:
    n = len(cluster.ports)
    config = {
        "node.id": str(node + 1),
        "controller.quorum.voters": ",".join(
            f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(cluster.controller_ports)),
        "default.replication.factor": str(n),
        "min.insync.replicas": str(max(1, n - 1)),
        "offsets.topic.replication.factor": str(n),
        "transaction.state.log.replication.factor": str(n),
        "transaction.state.log.min.isr": str(max(1, n - 1)),
        "share.coordinator.state.topic.replication.factor": str(n),
        "share.coordinator.state.topic.min.isr": str(max(1, n - 1)),
    }
    config.update(extra or {})
    return config


def start_cluster(
    base_dir: Path, nodes: int = 3, *, timeout_s: float = 120, heap: str = "384m",
    extra_config: dict[str, str] | None = None,
) -> LocalCluster:
    """Start a ``nodes``-node KRaft cluster (replication factor ``nodes``,
    ``min.insync.replicas = nodes - 1``) with data under ``base_dir/node-<i>``."""
    base_dir = Path(base_dir).expanduser().resolve()
    taken: set[int] = set()
    ports, cports = [], []
    for _ in range(nodes):
        ports.append(free_port(exclude=taken))
        taken.add(ports[-1])
        cports.append(free_port(exclude=taken))
        taken.add(cports[-1])
    cluster = LocalCluster([], ports, cports, new_cluster_id())
    for i in range(nodes):
        data_dir = base_dir / f"node-{i}"
        data_dir.mkdir(parents=True, exist_ok=True)
        cluster.brokers.append(launch(data_dir, ports[i], cports[i], timeout_s, heap,
                                       _cluster_config(i, cluster, extra_config),
                                       cluster.cluster_id, wait=False))
    for b in cluster.brokers:
        wait_ready(b, timeout_s)
    return cluster


def restart_node(cluster: LocalCluster, node: int, *, timeout_s: float = 120,
                 heap: str = "384m") -> LocalBroker:
    """Start node ``node`` of ``cluster`` again (same ports, same data)."""
    old = cluster.brokers[node]
    broker = launch(old.data_dir, old.port, old.controller_port, timeout_s, heap,
                     _cluster_config(node, cluster, None), cluster.cluster_id)
    cluster.brokers[node] = broker
    return broker


def stop_cluster(cluster: LocalCluster, *, timeout_s: float = 30) -> None:
    for b in cluster.brokers:
        stop_broker(b.data_dir, timeout_s=timeout_s)

