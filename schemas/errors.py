"""The exception hierarchy for errors meant for users.

Every error a user can cause or fix derives from :class:`LmgdError`. The CLI maps
:class:`BadInputError` to exit code 2 and any other :class:`LmgdError` to exit code 1,
printing only the message (no traceback).
"""

from __future__ import annotations


class LmgdError(Exception):
    """Base class of all errors meant for users; the message says what and where."""

    exit_code = 1


class BadInputError(LmgdError):
    """The user's input (file, row, key, argument) is invalid; exit code 2."""

    exit_code = 2


class SceneFormatError(BadInputError):
    """A seed-scene folder or file is missing, corrupt or inconsistent."""


class ConfigError(BadInputError):
    """A job spec, recipe or command-line value is invalid."""


class RunFailure(LmgdError):
    """Work failed at run time although its input was valid; exit code 1."""


class CheckpointError(BadInputError):
    """A checkpoint or pretrained component directory is missing, corrupt or does not match."""


class SchemaError(BadInputError):
    """A table (manifest, index, QA rows) does not match its schema; the message lists every
    problem with its row, column, value and what is allowed."""
