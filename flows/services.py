"""Local services for running the flywheel like production on one machine: a Prefect server, an MLflow server and
one process worker per work pool, each on 127.0.0.1 and a free port, each in its own process group.

`flywheel serve-local` starts them and records their PIDs and URLs in `.flywheel/services.json` (next to the params
file); `flywheel deploy` and `flywheel stop` read that file. Nothing here is needed for `flywheel run` or `dvc repro`
(Prefect's ephemeral mode and the local MLflow backend), and tests start their own set on their own ports.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stores.processes import free_port, start_in_group, stop_group, wait_healthy
from tasks.config import Settings
from tasks.errors import FlywheelError

CPU_POOL, GPU_POOL = "cpu-pool", "gpu-pool"
HOST = "127.0.0.1"
PREFECT_SERVER_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"}
BIN = Path(sys.executable).parent
# A turn runs its stages one after another, each a flow run a worker must pick up: Prefect's default 10 s between a
# worker's queries adds ~5 s of waiting per stage. Local workers ask every 2 s (one cheap API call to a local server).
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "2", "FLYWHEEL_PROGRESS": "0"}


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


def start_services(settings: Settings) -> Services:
    """Prefect server, MLflow server (sqlite backend and artifacts under `paths.mlflow`) and both workers."""
    logs = settings.root / ".flywheel" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect_port, mlflow_port = free_port(HOST), free_port(HOST)
    services = Services(f"http://{HOST}:{prefect_port}/api", f"http://{HOST}:{mlflow_port}", logs=str(logs))
    try:
        prefect = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)]
        # The UI calls the API at the URL the server hands it (GET /ui-settings); unset, that is the default port's.
        ui_env = {**PREFECT_SERVER_ENV, "PREFECT_SERVER_UI_API_URL": services.prefect_api_url}
        services.pids["prefect-server"] = _start("prefect-server", prefect, logs, ui_env)
        mlflow_dir = settings.path("mlflow")
        mlflow = [
            str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination", str(mlflow_dir / "artifacts"),
        ]  # fmt: skip
        services.pids["mlflow-server"] = _start("mlflow-server", mlflow, logs, {"MLFLOW_DISABLE_TELEMETRY": "true"})
        for name, url in (("prefect-server", services.prefect_api_url), ("mlflow-server", services.mlflow_url)):
            wait_healthy(name, f"{url}/health", services.pids[name], logs / f"{name}.log", 120, FlywheelError)
        for pool in (CPU_POOL, GPU_POOL):
            command = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", pool]
            services.pids[pool] = _start(pool, command, logs, {**services.environment(), **WORKER_ENV})
    except BaseException:
        stop_services(services)
        raise
    path = services_file(settings)
    path.write_text(json.dumps(asdict(services), indent=2))
    return services


# A service's log is a file, not a terminal: it keeps the INFO lines a quiet CLI holds back (stores/env.py).
SERVICE_LOG_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO", "MLFLOW_LOGGING_LEVEL": "INFO"}


def _start(name: str, command: list[str], logs: Path, env: dict[str, str]) -> int:
    return start_in_group(command, logs / f"{name}.log", {**SERVICE_LOG_ENV, **env}).pid


def stop_services(services: Services) -> list[str]:
    """Workers first (they ignore a first SIGTERM while idle), then the servers; each whole process group."""
    order = sorted(services.pids, key=lambda name: name.endswith("server"))
    for name in order:
        stop_group(services.pids[name])
    return [f"{name} (PID {services.pids[name]})" for name in order]
