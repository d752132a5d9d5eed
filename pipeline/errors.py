"""Errors that stop a run with a one-line message for the user."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and what would be right."""


class DataError(ValueError):
    """Input data is missing or unusable; the message names the path and how to fix it."""


class RunFailed(RuntimeError):
    """The federated run could not finish (too few hospitals, nothing aggregated, ...)."""
