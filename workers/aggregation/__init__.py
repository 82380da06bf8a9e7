"""The aggregation role: a request's ScoreChunks -> one ranked ScoreResult
(``aggregator.py``), ranked by ``ranking.py`` (which the fused role shares)."""
