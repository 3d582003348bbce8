"""Errors a user can act on. `FlywheelError` lives in the lowest layer so the stores can raise it too; the CLI prints
its message and exits non-zero without a traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class FlywheelError(Exception):
    pass


class StoreError(FlywheelError):
    """The store cannot be opened or written: the message names the path and what to do."""
