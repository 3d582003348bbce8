"""MLflow tracking access: where runs go, one parent run per turn, one child run per executed stage.

Without `MLFLOW_TRACKING_URI` the backend is local: `mlflow/mlflow.db` (sqlite) with artifacts in
`mlflow/artifacts`. Child runs are made with the client API (explicit parent id), not the thread-local fluent
stack, so they work the same inside Prefect task threads, the CLI and `dvc repro` processes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.time import get_current_time_millis

import mlflow
from mlflow import MlflowClient

TURN_KEY_TAG = "flywheel.turn_key"
HISTORY_TAG = "flywheel.history"
# What the user asked for, read before anything calls mlflow.set_tracking_uri (which writes this variable too).
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def configure(mlflow_dir: Path, experiment: str) -> str:
    """Point MLflow at the project backend (unless the environment names a server); returns the experiment id."""
    uri = _USER_TRACKING_URI or f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        _create_sqlite_backend(Path(uri.removeprefix("sqlite:///")))
    mlflow.set_tracking_uri(uri)
    if _USER_TRACKING_URI is None:  # keep child processes (dvc stage cmds) choosing their own project's backend
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    artifacts = (mlflow_dir / "artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return mlflow.create_experiment(experiment, artifact_location=artifacts)


def experiment_on(server_url: str, experiment: str) -> str:
    """The experiment's id on an MLflow server (created there if new, as the first run would)."""
    client = MlflowClient(tracking_uri=server_url)
    found = client.get_experiment_by_name(experiment)
    return found.experiment_id if found is not None else client.create_experiment(experiment)


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs list. MLflow 3.17 opens an experiment on its GenAI overview (traces; empty here) whatever
    the experiment's kind tag, unless the UI's own GenAI / Model training switch was flipped: link the runs instead."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def _create_sqlite_backend(db: Path) -> None:
    """MLflow builds its schema with migrations that are not atomic on sqlite (a full disk half-way leaves a database
    no later run can open), so a new backend is built aside and linked into place only when complete."""
    if db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    staging = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        SqlAlchemyStore(f"sqlite:///{staging}", str(db.parent / "artifacts")).engine.dispose()
        try:
            os.link(staging, db)  # never replaces a backend another process finished first
        except FileExistsError:
            pass
    finally:
        staging.unlink(missing_ok=True)


def ui_command(mlflow_dir: Path, experiment_id: str) -> str:
    """How a person sees the experiment's runs: the server's runs page, or the local backend's UI command and page."""
    uri = _USER_TRACKING_URI
    if uri and not uri.startswith("sqlite:"):
        return f"open {runs_page(uri, experiment_id)}"
    command = f"mlflow ui --backend-store-uri sqlite:///{mlflow_dir / 'mlflow.db'} --host 127.0.0.1 --port 5000"
    return f"{command}, then open {runs_page('http://127.0.0.1:5000', experiment_id)}"


def turn_run(experiment_id: str, turn_key: str, turn: int, tags: dict[str, str]) -> str:
    """The parent run of a turn: found by its key (a resumed or rerun turn logs under the same run) or created."""
    return find_or_create(experiment_id, TURN_KEY_TAG, turn_key, f"turn-{turn}", tags)


def history_run(of: RunHandle) -> RunHandle:
    """The experiment's one `flywheel-curve` run: every turn's held-out metrics at step = turn, so the MLflow UI's
    chart of it is the flywheel's learning curve across turns."""
    experiment_id = of.client.get_run(of.run_id).info.experiment_id
    return RunHandle.of(find_or_create(experiment_id, HISTORY_TAG, "true", "flywheel-curve", {}))


def find_or_create(experiment_id: str, key: str, value: str, run_name: str, tags: dict[str, str]) -> str:
    client = MlflowClient()
    existing = client.search_runs([experiment_id], filter_string=f"tags.`{key}` = '{value}'", max_results=1)
    if existing:
        return existing[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={key: value, **tags})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


class RunHandle:
    """One MLflow run (a turn's parent run or a stage's child run); everything a stage logs goes through it."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def of(cls, run_id: str) -> RunHandle:
        return cls(MlflowClient(), run_id)

    def log_params(self, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = get_current_time_millis()
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str) -> str:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)
        return f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_text(text)
            self.log_artifact(path)

    def log_figure(self, figure, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            figure.savefig(path, dpi=120, bbox_inches="tight")
            self.log_artifact(path)


@contextmanager
def stage_run(experiment_id: str, parent_run_id: str, stage: str, tags: dict[str, str]) -> Iterator[RunHandle]:
    client = MlflowClient()
    run = client.create_run(
        experiment_id, run_name=stage, tags={"mlflow.parentRunId": parent_run_id, "flywheel.stage": stage, **tags}
    )
    handle = RunHandle(client, run.info.run_id)
    try:
        yield handle
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
