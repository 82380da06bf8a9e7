"""Traffic generation, replay, percentile reports and benchmarks."""
