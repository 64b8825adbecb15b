"""The torch core: models, losses, noise simulation, training loop, pseudo-label math.

Nothing under ``tasks.core`` imports Prefect or MLflow, so it runs (and is benchmarked) on a bare
machine that has only torch, numpy and scikit-learn.
"""
