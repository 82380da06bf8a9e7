"""The features role: ScoreRequests -> FeatureChunks.

``actor.py`` is the role; ``spec.py`` reads the feature spec (``default.toml``) into a
pipeline; ``plan.py`` is that pipeline compiled into a few array operations (the hot path);
``transforms.py`` holds the hashing rules and one function per feature, the reference the
plan is checked against.
"""
