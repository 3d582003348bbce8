"""Errors a user can act on (bad params, bad input files, stages asked for out of order). The CLI prints their
message and exits non-zero without a traceback; anything else is a bug and keeps its traceback."""

from stores.errors import FlywheelError, StoreError


class InputError(FlywheelError, ValueError):
    """Input data that cannot be used; the message names the file (and line and field where it can)."""


class ModelServerError(FlywheelError, RuntimeError):
    """The model server could not answer (down, too slow, or serving other weights): a later attempt may succeed."""


__all__ = ["FlywheelError", "InputError", "ModelServerError", "StoreError"]
