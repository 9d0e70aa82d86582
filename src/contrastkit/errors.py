"""Errors that contrastkit reports to users.

Every error raised for bad input derives from :class:`ContrastkitError`; the command line prints its
message (which names the problem and what to do) and exits with status 2, never a traceback.
"""

from __future__ import annotations


class ContrastkitError(Exception):
    """Base class for errors caused by input the user can fix."""


class DataError(ContrastkitError):
    """A data set cannot be found, read or decoded."""


class ConfigError(ContrastkitError):
    """A configuration value is invalid or the combination of values is impossible."""


class TrainingError(ContrastkitError):
    """Training cannot go on (for example the loss became NaN)."""
