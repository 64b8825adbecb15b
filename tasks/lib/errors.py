"""The errors weakflow reports in one line (the CLI prints them; the Python API raises them), in a module
that imports nothing heavy, so ``weakflow.DataError`` and friends cost nothing to reach."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, phrased as ``key = value: what was expected``."""


class DataError(ValueError):
    """A data file that cannot be read or used; the message names the file and the problem."""


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead; the message says which model/version and why."""
