"""Data checks: the Great Expectations suite that gates every pipeline run before training."""
