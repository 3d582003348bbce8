"""The `flywheel` command runs under tcmalloc where the machine has it (Debian's `libtcmalloc-minimal4`, which `make
setup` installs when it runs as root). glibc's malloc hands a training step's large buffers back to the kernel and
faults them in again as zeroed pages at the next step; tcmalloc keeps them for reuse. On a 2-core AMD EPYC an SFT
step of `bench/training.py` took 2.84-3.11 s under it (six runs) against 3.19-3.73 s under glibc (four, alternating),
with the same losses; generation did not change. `FLYWHEEL_ALLOCATOR=system` keeps glibc's malloc.

The allocator has to be in place before the first allocation, so the process re-executes itself once with
`LD_PRELOAD` set; the servers, workers and stage commands it starts inherit it.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import sys

ALLOCATOR_ENV = "FLYWHEEL_ALLOCATOR"
TCMALLOC = "tcmalloc_minimal"


def tcmalloc_library() -> str | None:
    """The tcmalloc shared library's name as the dynamic loader finds it, or None where it is not installed."""
    return ctypes.util.find_library(TCMALLOC)


def preloaded() -> str:
    """The allocator this process runs under: "tcmalloc" or "glibc"."""
    return "tcmalloc" if TCMALLOC in os.environ.get("LD_PRELOAD", "") else "glibc"


def preload_tcmalloc() -> None:
    """Re-execute this process with tcmalloc preloaded; a no-op where it already is, where the library is missing and
    where the user asked for the system allocator."""
    if os.environ.get(ALLOCATOR_ENV, "tcmalloc") == "system" or preloaded() == "tcmalloc":
        return
    library = tcmalloc_library()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD", "")]))
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))  # no "large alloc" lines on stderr
    sys.stdout.flush()
    sys.stderr.flush()
    # the running interpreter by its full path (argv[0] may be a bare "python" that PATH resolves elsewhere)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def system_allocator_env() -> dict[str, str]:
    """This process's environment for a child that should run on glibc's malloc."""
    env = {**os.environ, ALLOCATOR_ENV: "system"}
    preloads = re.split(r"[:\s]+", env.pop("LD_PRELOAD", ""))  # the loader takes spaces and colons
    kept = [library for library in preloads if library and TCMALLOC not in library]
    return env | ({"LD_PRELOAD": " ".join(kept)} if kept else {})
