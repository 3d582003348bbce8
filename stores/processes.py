"""Helper processes the flywheel starts itself (Prefect and MLflow servers, workers, vLLM servers): each on a free
loopback port, in its own process group with its output in a log file, waited for on its health URL, and stopped by
PID, the whole group (a server's engine or worker children go with it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_in_group(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )


def wait_healthy(name: str, url: str, pid: int, log: Path, timeout_s: float, error: type[Exception]) -> None:
    """Return once `url` answers 200; raise `error` (with the log's tail) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            raise error(f"{name} exited at start ({log}):\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_group(pid)
    raise error(f"{name} not healthy at {url} in {timeout_s:.0f} s ({log}):\n{_tail(log)}")


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_group(pid: int) -> None:
    """SIGTERM the group twice (Prefect workers ignore a first one while idle), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and is_running(pid):
            time.sleep(0.1)
        if not is_running(pid):
            return


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
