"""One flywheel run per store at a time: an exclusive, non-blocking `flock` on `<store>.run.lock`, held for a whole
run. A second run fails at once with the PID and start time of the holder instead of interleaving its stages with
the first; the kernel drops the lock when the holder dies (kill -9 included), so a crash never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from stores.errors import StoreError


@contextmanager
def run_lock(store_path: Path) -> Iterator[None]:
    path = Path(store_path).with_name(Path(store_path).name + ".run.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 (held for the duration of the run)
    except OSError as error:
        raise StoreError(f"cannot create the run lock {path}: {error.strerror}") from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(
                f"the store {store_path} is in use by a running flywheel ({holder}); wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        yield
    finally:
        handle.close()
