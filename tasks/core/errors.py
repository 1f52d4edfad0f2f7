"""Errors the stages raise, and which of them a retry cannot fix.

A permanent error (bad input, bad config, a missing model or version, an input with no usable row)
fails a stage at once: Prefect does not retry it, and a Ray job hands it back as itself. Everything
else (a lost Ray worker, a server that timed out) is worth another attempt.
"""

from __future__ import annotations


class StageInputError(ValueError):
    """A stage's input cannot give it anything to work on (no usable row), said with which input and why."""


class ModelReferenceError(FileNotFoundError):
    """A model reference that names no model: the reference and everything tried are in the message."""


class ModelAuthError(PermissionError):
    """A served model refused the key (401/403): no retry can fix it, the stage stops at once."""


def permanent_errors() -> tuple[type[BaseException], ...]:
    """The exception types a retry cannot fix."""
    from schemas.lake import LakeError

    return (ValueError, KeyError, TypeError, FileNotFoundError, PermissionError, LakeError)


def is_permanent(error: BaseException) -> bool:
    """Whether a retry cannot fix this error."""
    return isinstance(error, permanent_errors())
