"""Production mode for real: a Prefect server, an MLflow server and the cpu-pool and gpu-pool process workers on free
loopback ports; `flywheel deploy` makes the deployments, `flywheel trigger` runs a tiny turn through them. Stages that
use the model must have run on gpu-pool, the rest on cpu-pool; the rows land in DuckDB and the runs and model versions
in the MLflow server; everything is stopped by PID."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.project import REPO, write_params

pytestmark = pytest.mark.integration


def _flywheel(params, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", "--params", str(params), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)


def test_a_triggered_deployment_runs_each_stage_on_its_pool(tmp_path):
    from flows.services import load_services
    from mlflow import MlflowClient
    from stores.processes import is_running
    from stores.store import Store
    from tasks.config import load_settings
    from tasks.runner import STAGES

    # Routing is what this test proves: the preference and rewrite stages still run on their pool, recording empty
    # tables (their model work is tested in-process by tests/test_turn.py), so each stage process stays short.
    lean = {"context": {"docs": 0}, "skip": ["preference", "rewrite"], "retrain": {"dpo": {"max_steps": 0}}}
    params = write_params(tmp_path, lean)
    settings = load_settings(params)
    served = _flywheel(params, "serve-local")
    assert served.returncode == 0, served.stderr
    services = load_services(settings)
    try:
        assert "Prefect UI: http://127.0.0.1:" in served.stdout and "MLflow UI:  http://127.0.0.1:" in served.stdout
        deployed = _flywheel(params, "deploy", "--cron", "0 3 * * *")
        assert deployed.returncode == 0, deployed.stderr
        api = services.prefect_api_url
        ui_settings = httpx.get(f"{api.removesuffix('/api')}/ui-settings").json()
        assert ui_settings["api_url"] == api  # the UI on a free port calls its own server, not :4200
        scheduled = httpx.get(f"{api}/deployments/name/flywheel/scheduled").json()
        assert scheduled["work_pool_name"] == "cpu-pool"
        assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == ["0 3 * * *"]

        triggered = _flywheel(params, "trigger")
        assert triggered.returncode == 0, triggered.stderr[-3000:]
        assert "held-out" in triggered.stdout.lower()
        assert "INFO" in Path(services.logs, "gpu-pool.log").read_text()  # service logs keep what the CLI holds back

        runs = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["flywheel-stage"]}}}).json()
        pools = {run["parameters"]["name"]: run["work_pool_name"] for run in runs}
        assert all(run["state"]["type"] == "COMPLETED" for run in runs)
        assert pools == {name: "gpu-pool" if stage.uses_model else "cpu-pool" for name, stage in STAGES.items()}

        mlflow = MlflowClient(tracking_uri=services.mlflow_url)
        versions = mlflow.search_model_versions("name = 'flywheel-policy'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        experiment = mlflow.get_experiment_by_name("flywheel").experiment_id
        assert len(mlflow.search_runs([experiment], "tags.`flywheel.stage` = 'retrain'")) == 1
        (curve,) = mlflow.search_runs([experiment], "tags.`flywheel.history` = 'true'")  # the UI's per-turn curve
        assert [m.step for m in mlflow.get_metric_history(curve.info.run_id, "heldout_candidate_rouge_l")] == [1]
    finally:
        assert _flywheel(params, "stop").returncode == 0
    assert not any(is_running(pid) for pid in services.pids.values())

    with Store.open(settings.path("store")) as store:
        stages = {row[0] for row in store.con.execute("SELECT stage FROM stage_runs").fetchall()}
        assert stages == set(STAGES) and len(store.read("annotations")) == 8
