"""The project's own exceptions: every failure a user can cause ends in one of these.

The CLI turns a :class:`DaelabError` into a one-line message ``daelab: error: <what> (<hint>)``
with exit code 2 (bad usage or input) or 1 (a runtime failure); anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations


class DaelabError(Exception):
    """Base class: a message for the user and an optional hint on what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(DaelabError):
    """Bad input from the user: a flag, a spec, a file they pointed at."""

    exit_code = 2


class DataError(UsageError):
    """A data file is missing, corrupt, or not what it claims to be."""


class ConfigError(UsageError):
    """A config file, a flag value, a spec or a registry name is invalid."""


class CheckpointError(DaelabError):
    """A checkpoint is missing, corrupt, unsafe, or from another model or format version."""


class TrainingError(DaelabError):
    """Training cannot go on (non-finite loss, for instance); the last good checkpoint is kept."""


class OutputError(DaelabError):
    """A result could not be written (a full disk, a file system gone read-only); what was there is kept."""


class RunLockedError(UsageError):
    """Another live process is writing to the same run directory."""


class TrainingInterrupted(DaelabError):
    """Training was stopped by a signal after writing a checkpoint it can resume from."""

    exit_code = 130
