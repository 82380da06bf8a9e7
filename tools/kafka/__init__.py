"""A real Apache Kafka broker (KRaft mode, no ZooKeeper) for development and tests.

The broker's jars are fetched once from Maven Central with ``mvn`` (the pom packaged here)
into ``cache_dir()/kafka-<version>/libs`` (:mod:`.download`). A broker is a single
``broker,controller`` KRaft node listening on loopback only (:mod:`.broker`, configured by
:mod:`.broker_config`); its data directory holds ``server.properties``, the log dirs,
``broker.log`` (the JVM's stdout/stderr) and ``broker.json`` (pid and ports), so stopping
and starting it again with the same data directory keeps topics and messages. The fault
tests run a three-node cluster (:mod:`.cluster`). :mod:`.probes` asks a cluster whether it
answers; :mod:`.command` is ``adstream kafka start|stop|status``.
"""

from tools.kafka.broker import LocalBroker, start_broker, stop_broker
from tools.kafka.broker_config import SaslSslListener
from tools.kafka.cluster import LocalCluster, restart_node, start_cluster, stop_cluster
from tools.kafka.command import register
from tools.kafka.download import ensure_kafka
from tools.kafka.errors import KafkaSetupError
from tools.kafka.paths import BOOTSTRAP_ENV, KAFKA_VERSION, cache_dir, find_data_dir
from tools.kafka.probes import broker_answers, describe_cluster

__all__ = [
    "BOOTSTRAP_ENV",
    "KAFKA_VERSION",
    "KafkaSetupError",
    "LocalBroker",
    "LocalCluster",
    "SaslSslListener",
    "broker_answers",
    "cache_dir",
    "describe_cluster",
    "ensure_kafka",
    "find_data_dir",
    "register",
    "restart_node",
    "start_broker",
    "start_cluster",
    "stop_broker",
    "stop_cluster",
]
