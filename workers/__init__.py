"""The ads roles: feature actor, scoring worker and its model backends, aggregator."""
