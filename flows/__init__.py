"""Flows: Prefect wiring of the stages in tasks/, and the ``weakflow`` command line."""
