"""Model surgery around a CPT run: merging models (MergeKit recipes) and extending the vocabulary."""
