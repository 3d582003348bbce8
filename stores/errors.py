"""Errors a user can act on. `FlywheelError` lives in the lowest layer so the stores can raise it too; the CLI prints
its message and exits non-zero without a traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno
import re


class FlywheelError(Exception):
    pass


class StoreError(FlywheelError):
    """The store cannot be opened or written: the message names the path and what to do."""


_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
_DISK_MESSAGE = re.compile(r"disk I/O error|database or disk is full|readonly database|No space left|File too large")


def disk_failure(error: BaseException) -> str | None:
    """What could not be written and why, if `error` (or what caused it) is a full, read-only or refused disk."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            return f"{seen.filename or 'a file'}: {seen.strerror}"
        if _DISK_MESSAGE.search(str(seen)):
            return str(seen).splitlines()[0][:300]
        seen = seen.__cause__ or seen.__context__
    return None
