"""The ``[metrics]`` settings: the endpoint's port and host, the lag interval, the stall limit."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.setting_rules import setting


@dataclass(frozen=True)
class MetricsSection:
    """The metrics/health HTTP endpoint of each worker process."""

    port: int = setting(0, ge=0, le=65535)  # /metrics, /healthz, /readyz on this port; 0 = off
    host: str = setting("0.0.0.0", nonempty=True)  # interface to listen on
    lag_interval_s: float = setting(5.0, gt=0)  # how often consumer lag is read from the broker
    stall_after_s: float = setting(10.0, gt=0)  # /healthz fails when the event loop did not run this long
