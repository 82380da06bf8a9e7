"""Prometheus metrics, health and readiness of one worker process.

:class:`Metrics` (:mod:`.middleware`) is the actor middleware that counts and times the loop
into plain accumulators (:mod:`.series`, :mod:`.histogram`); :mod:`.families` turns those
and the gauges read at that moment into metric families when Prometheus scrapes;
:mod:`.readiness` decides liveness and readiness; ``pipeline.endpoint`` serves all three
over HTTP. Every metric name is in :data:`CATALOG` (:mod:`.catalog`); the settings are
:class:`MetricsSection` (:mod:`.section`).
"""

from pipeline.metrics.catalog import CATALOG, HANDLER_COUNTS, sample_names
from pipeline.metrics.middleware import Metrics
from pipeline.metrics.readiness import Check
from pipeline.metrics.section import MetricsSection

__all__ = ["CATALOG", "HANDLER_COUNTS", "Check", "Metrics", "MetricsSection", "sample_names"]
