"""Deployment: promotion gates, the MLflow model wrapper, and (later) serving."""
