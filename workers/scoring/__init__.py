"""The scoring role: FeatureChunks -> ScoreChunks, through a model's backends.

``scorer.py`` is the role; ``repository.py`` reads the model repository, ``versions.py``
keeps the loaded versions (hot swap) and ``routing.py`` decides which scores what (A/B,
shadow); ``inputs.py`` maps feature outputs to a model's inputs; ``backends/`` runs the
model (``backend_names.py`` names them without importing any); ``reference_model.py``
builds the reference model and ``quantize.py`` its INT8 form.
"""
