"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class MmtrainError(Exception):
    """Bad input the user can fix; the message says what and how."""

    exit_code = 2


class ConfigError(MmtrainError):
    """A config value or combination that cannot work."""


class DataError(MmtrainError):
    """Missing, malformed or mismatched dataset files."""


class CheckpointError(MmtrainError):
    """A missing, corrupt or mismatched checkpoint."""


class StorageError(MmtrainError):
    """The disk (or the quota) is full: nothing to fix in the config, but not a crash either."""
