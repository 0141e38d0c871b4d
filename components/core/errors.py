"""The project's errors and exit codes, in one place.

A stage, and every ``rlhf`` command, exits

- 0 when it succeeded;
- 2 for invalid params (``ConfigError``: a key of params.yaml, a profile or ``-S``);
- 3 for bad input (data, model files, a toxicity scorer), a refused data gate, or a non-finite
  loss, reward or gradient: the same input fails the same way, so the flow never retries these.

Anything else is a bug and keeps its traceback (exit 1). Every message names the key, file,
line, record or step it is about.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_PARAMS = 2
EXIT_BAD_INPUT = 3


class ConfigError(ValueError):
    """params.yaml, a profile or an override is invalid; the message names the key."""


class DataError(ValueError):
    """A data file is unusable; the message names the file, the line and the field."""


class ModelError(RuntimeError):
    """A model or tokenizer cannot be loaded or does not fit; the message names the path."""


class ValidationFailed(RuntimeError):
    """Bad data: the message lists every failure with file, line, record id, field and rule."""


class ToxicityScorerError(ValueError):
    """The configured toxicity scorer cannot be loaded or used; the message says why."""


class ServiceError(RuntimeError):
    """A child server did not start (exited, or no health answer in time); the message says why."""


# What a stage or command reports as one clear line and a non-zero exit, without a traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, ModelError, ValidationFailed, ToxicityScorerError, FloatingPointError)


def exit_code(error: BaseException) -> int:
    """2 for bad params, 3 for any other input error (see the module docstring)."""
    return EXIT_BAD_PARAMS if isinstance(error, ConfigError) else EXIT_BAD_INPUT
