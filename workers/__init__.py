"""The ads roles, grouped by role: ``features/``, ``scoring/`` (with its backends and model
repository), ``aggregation/``; beside them what the roles share (settings, replies, request
ids, stage spans), the fused role and the role table (``roles.py``)."""
