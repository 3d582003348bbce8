"""Local services for running the flywheel like production on one machine: a Prefect server, an MLflow server and
one process worker per work pool, each on 127.0.0.1 and a free port, each in its own process group.

`flywheel serve-local` starts them and records their PIDs and URLs in `.flywheel/services.json` (next to the params
file); `flywheel deploy` and `flywheel stop` read that file. Nothing here is needed for `flywheel run` or `dvc repro`
(Prefect's ephemeral mode and the local MLflow backend), and tests start their own set on their own ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from tasks.config import Settings
from tasks.errors import FlywheelError
from tasks.llm.vllm_server import free_port

CPU_POOL, GPU_POOL = "cpu-pool", "gpu-pool"
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


@dataclass
class Services:
    prefect_api_url: str
    mlflow_url: str
    pids: dict[str, int] = field(default_factory=dict)  # service name -> PID (a process-group leader)
    logs: str = ""

    def environment(self) -> dict[str, str]:
        """What a client of these services (a worker, `flywheel deploy`, a test) needs in its environment."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",  # stage results travel from the worker to the turn flow
        }


def services_file(settings: Settings) -> Path:
    return settings.root / ".flywheel" / "services.json"


def load_services(settings: Settings) -> Services:
    path = services_file(settings)
    if not path.exists():
        raise FlywheelError(f"no local services recorded in {path}: start them with `flywheel serve-local`")
    return Services(**json.loads(path.read_text()))


def _start(name: str, command: list[str], logs: Path, env: dict[str, str]) -> int:
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    return process.pid


def _wait_healthy(name: str, url: str, pid: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            raise FlywheelError(f"{name} exited at start; see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise FlywheelError(f"{name} not healthy at {url} in {timeout_s:.0f} s; see {log}")


def start_services(settings: Settings, with_workers: bool = True) -> Services:
    """Prefect server, MLflow server (sqlite backend and artifacts under `paths.mlflow`) and both workers."""
    logs = settings.root / ".flywheel" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect_port, mlflow_port = free_port(HOST), free_port(HOST)
    services = Services(f"http://{HOST}:{prefect_port}/api", f"http://{HOST}:{mlflow_port}", logs=str(logs))
    try:
        services.pids["prefect-server"] = _start(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
            logs,
            {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"},
        )
        mlflow_dir = settings.path("mlflow")
        services.pids["mlflow-server"] = _start(
            "mlflow-server",
            [
                str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(mlflow_port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                "--artifacts-destination", str(mlflow_dir / "artifacts"),
            ],
            logs,
            {"MLFLOW_DISABLE_TELEMETRY": "true"},
        )  # fmt: skip
        _wait_healthy("Prefect server", f"{services.prefect_api_url}/health", services.pids["prefect-server"], logs)
        _wait_healthy("MLflow server", f"{services.mlflow_url}/health", services.pids["mlflow-server"], logs)
        if with_workers:
            for pool in (CPU_POOL, GPU_POOL):
                services.pids[pool] = start_worker(services, pool, settings)
    except BaseException:
        stop_services(services)
        raise
    path = services_file(settings)
    path.write_text(json.dumps(asdict(services), indent=2))
    return services


def start_worker(services: Services, pool: str, settings: Settings) -> int:
    """A process worker for `pool`; it creates the pool (type process) if it does not exist yet."""
    command = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", pool]
    env = {**services.environment(), "FLYWHEEL_PROGRESS": "0", "FLYWHEEL_WORK_POOL": pool}
    return _start(pool, command, Path(services.logs), env)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_services(services: Services) -> list[str]:
    """Workers first (they ignore a first SIGTERM while idle), then the servers; each whole process group."""
    order = sorted(services.pids, key=lambda name: name.endswith("server"))
    stopped = []
    for name in order:
        pid = services.pids[name]
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and is_running(pid):
                time.sleep(0.1)
            if not is_running(pid):
                break
        stopped.append(f"{name} (PID {pid})")
    return stopped
