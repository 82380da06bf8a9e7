"""What the middleware accumulates: one actor's counters and histograms, one model's batch
histograms, their buckets, and which metric each attribute is exported as."""

from __future__ import annotations

import time

from pipeline.headers import SENT_MS, int_header
from pipeline.metrics.histogram import Histogram

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
DELTA_BUCKETS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, .01, .03, .1, .3, 1.0)
"""|Δscore| buckets of a shadow version (CTRs lie in [0, 1])."""
# 1, 2, 4 .. 16384 with a step between powers of two from 16 on (batch sizes near the
# preferred sizes are told apart, and the benchmark can time the model at formed sizes)
ROW_BUCKETS = tuple(sorted({float(2 ** i) for i in range(15)}
                           | {float(3 * 2 ** i) for i in range(3, 13)}))

ACTOR_COUNTERS = {  # metric -> ActorSeries attribute
    "adstream_records_processed": "processed",
    "adstream_dead_letters": "dead_letters",
    "adstream_records_committed": "committed",
    "adstream_commits": "commits",
    "adstream_pauses": "pauses",
    "adstream_rebalances": "rebalances",
}
ACTOR_HISTOGRAMS = {
    "adstream_stage_seconds": "stage",
    "adstream_kafka_queue_seconds": "kafka_queue",
    "adstream_end_to_end_seconds": "end_to_end",
}
BATCH_HISTOGRAMS = {  # metric -> BatchSeries attribute
    "adstream_batch_rows": "rows",
    "adstream_model_seconds": "model",
    "adstream_batch_queue_seconds": "queue",
}


class ActorSeries:
    """One actor's counters and histograms."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.processed = self.dead_letters = self.committed = self.commits = 0
        self.pauses = self.rebalances = 0
        self.stage = Histogram(LATENCY_BUCKETS)
        self.kafka_queue = Histogram(LATENCY_BUCKETS)
        self.end_to_end = Histogram(LATENCY_BUCKETS)
        self.consumed: dict[tuple[str, int], int] = {}
        self.produced: dict[str, int] = {}
        # per partition since assigned: the first offset fetched and the last one committed
        self.first_fetched: dict[tuple[str, int], int] = {}
        self.last_commit: dict[tuple[str, int], int] = {}

    def observe_end_to_end(self, headers: dict[str, bytes]) -> None:
        sent = int_header(headers, SENT_MS)
        if sent is not None:
            self.end_to_end.observe(max(0.0, time.time() - sent / 1000))


class BatchSeries:
    """One model's batch sizes, model time and batch-queue waits."""

    def __init__(self) -> None:
        self.rows = Histogram(ROW_BUCKETS)
        self.model = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)
