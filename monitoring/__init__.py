"""Monitoring: what production predictions are compared against (drift detection builds on this)."""
