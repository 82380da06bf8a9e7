"""Every metric a worker exports: name, type and help (what a dashboard may query)."""

from __future__ import annotations

# name -> (type, help). Counters are exported as <name>_total, histograms as _bucket/_sum/_count.
CATALOG: dict[str, tuple[str, str]] = {
    "adstream_records_consumed": ("counter", "Records fetched from an input partition."),
    "adstream_records_processed": ("counter", "Records whose outputs Kafka acknowledged."),
    "adstream_dead_letters": ("counter", "Records sent to the dead-letter topic."),
    "adstream_messages_produced": ("counter", "Messages produced and acknowledged, by topic."),
    "adstream_records_committed": ("counter", "Input records covered by committed offsets."),
    "adstream_commits": ("counter", "Offset commits."),
    "adstream_pauses": ("counter", "Times the in-flight budget paused the partitions."),
    "adstream_rebalances": ("counter", "Partition assignments received."),
    "adstream_expired": ("counter", "Work dropped because its deadline had passed."),
    "adstream_rejected": ("counter", "Requests answered 'rejected' (invalid input)."),
    "adstream_partial": ("counter", "Requests answered 'partial' at their deadline."),
    "adstream_duplicates": ("counter", "Redelivered chunks dropped by the aggregator."),
    "adstream_stage_seconds": (
        "histogram", "Time from handing a fetched batch to the handler to Kafka acknowledging its outputs."),
    "adstream_kafka_queue_seconds": (
        "histogram", "Time a record waited in Kafka (record timestamp to fetch)."),
    "adstream_end_to_end_seconds": (
        "histogram", "Time from the client sending the request to this stage's output acked."),
    "adstream_batch_rows": ("histogram", "Rows per model batch."),
    "adstream_model_seconds": ("histogram", "Model compute time per batch."),
    "adstream_batch_queue_seconds": ("histogram", "Time a chunk waited in the batch queue."),
    "adstream_in_flight_records": ("gauge", "Records fetched but not done."),
    "adstream_paused_partitions": ("gauge", "Partitions paused for backpressure."),
    "adstream_assigned_partitions": ("gauge", "Partitions assigned to this member."),
    "adstream_consumer_lag_records": (
        "gauge", "Log end offset minus the group's committed offset, per owned partition."),
    "adstream_batch_queue_rows": ("gauge", "Rows waiting in the scorer's batch queue."),
    "adstream_spilled_batches": ("counter", "Batches run on the spill backend."),
    "adstream_shadow_abs_delta": (
        "histogram", "|shadow score - served score| per row the shadow version scored."),
    "adstream_spilled_rows": ("counter", "Rows scored on the spill backend."),
    "adstream_gpu_pool_bytes": (
        "gauge", "CuPy memory pools: device used/total/limit/peak, pinned used."),
    "adstream_gpu_pool_waits": ("counter", "Batches that waited for GPU pool memory."),
    "adstream_gpu_pool_wait_seconds": ("counter", "Time batches waited for GPU pool memory."),
    "adstream_ready": ("gauge", "1 when /readyz answers ready."),
}

# the counters a handler keeps itself (read at scrape time as adstream_<name>_total)
HANDLER_COUNTS = ("expired", "rejected", "partial", "duplicates")


def sample_names() -> set[str]:
    """Every sample name a worker can export (what a dashboard may query)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {name + s for name, (kind, _) in CATALOG.items() for s in suffixes[kind]}
