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

from tests import browser
from tests.project import REPO, write_params

pytestmark = pytest.mark.integration


def _flywheel(params, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flows.cli", "--params", str(params), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def deployed(module_folder):
    """serve-local, deploy (with a schedule) and trigger one tiny turn; the services are stopped by PID after the
    module's tests, and the test below checks they are gone."""
    from flows.services import load_services, services_file
    from tasks.config import load_settings

    # Routing is what this proves: the preference and rewrite stages still run on their pool, recording empty
    # tables (their model work is tested in-process by tests/test_turn.py), so each stage process stays short.
    lean = {"context": {"docs": 0}, "skip": ["preference", "rewrite", "rag_eval"], "retrain": {"dpo": {"max_steps": 0}}}
    params = write_params(module_folder, lean)
    settings = load_settings(params)
    served = _flywheel(params, "serve-local")
    assert served.returncode == 0, served.stderr
    services = load_services(settings)
    try:
        deployed = _flywheel(params, "deploy", "--cron", "0 3 * * *")
        assert deployed.returncode == 0, deployed.stderr
        triggered = _flywheel(params, "trigger")
        assert triggered.returncode == 0, triggered.stderr[-3000:]
        yield params, settings, services, served.stdout, triggered.stdout
    finally:
        if services_file(settings).exists():  # not stopped by the last test (e.g. run alone)
            _flywheel(params, "stop")


def test_a_triggered_deployment_runs_each_stage_on_its_pool(deployed):
    from mlflow import MlflowClient
    from stores.store import Store
    from tasks.runner import STAGES

    params, settings, services, served, triggered = deployed
    assert "Prefect UI: http://127.0.0.1:" in served and "MLflow UI:  http://127.0.0.1:" in served
    api = services.prefect_api_url
    ui_settings = httpx.get(f"{api.removesuffix('/api')}/ui-settings").json()
    assert ui_settings["api_url"] == api  # the UI on a free port calls its own server, not :4200
    scheduled = httpx.get(f"{api}/deployments/name/flywheel/scheduled").json()
    assert scheduled["work_pool_name"] == "cpu-pool"
    assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == ["0 3 * * *"]
    assert "held-out" in triggered.lower()
    assert "INFO" in Path(services.logs, "gpu-pool.log").read_text()  # service logs keep what the CLI holds back

    runs = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["flywheel-stage"]}}}).json()
    pools = {run["parameters"]["name"]: run["work_pool_name"] for run in runs}
    assert all(run["state"]["type"] == "COMPLETED" for run in runs)
    assert pools == {name: "gpu-pool" if stage.uses_model else "cpu-pool" for name, stage in STAGES.items()}

    mlflow = MlflowClient(tracking_uri=services.mlflow_url)
    versions = mlflow.search_model_versions("name = 'flywheel-policy'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]  # packaged, refined, candidate
    assert next(v for v in versions if v.version == "3").tags["data.turn"] == "1"  # published by the turn
    experiment = mlflow.get_experiment_by_name("flywheel").experiment_id
    assert len(mlflow.search_runs([experiment], "tags.`flywheel.stage` = 'retrain'")) == 1
    (curve,) = mlflow.search_runs([experiment], "tags.`flywheel.history` = 'true'")  # the UI's per-turn curve
    assert [m.step for m in mlflow.get_metric_history(curve.info.run_id, "heldout_candidate_rouge_l")] == [1]

    with Store.open(settings.path("store")) as store:
        stages = {row[0] for row in store.con.execute("SELECT stage FROM stage_runs").fetchall()}
        assert stages == set(STAGES) and len(store.read("annotations")) == 8


def test_both_uis_show_in_a_real_browser_what_the_turn_made(deployed):
    """Headless Chromium on the URLs serve-local printed: the Prefect deployments and work pools, the MLflow
    experiment's runs (MLflow 3.17 opens an experiment on its empty GenAI overview, so the printed link is the runs
    page) with the per-turn curve, and the registered model with its champion alias."""
    from mlflow import MlflowClient

    if browser.chromium() is None:
        pytest.skip("no chromium: `make browser` installs Debian's package")
    _, _, services, served, triggered = deployed
    prefect_ui = services.prefect_api_url.removesuffix("/api")
    names = ("scheduled", "gpu", "cpu")
    deployments = browser.page_text(f"{prefect_ui}/deployments", "prefect-deployments", names)
    assert "Create a deployment to get started" not in deployments
    assert all(name in deployments for name in names), deployments[:2000]
    pools = browser.page_text(f"{prefect_ui}/work-pools", "prefect-work-pools", ("cpu-pool", "gpu-pool"))
    assert "Can't connect to Server API" not in pools
    assert "cpu-pool" in pools and "gpu-pool" in pools, pools[:2000]

    experiment = MlflowClient(tracking_uri=services.mlflow_url).get_experiment_by_name("flywheel").experiment_id
    runs_url = f"{services.mlflow_url}/#/experiments/{experiment}/runs"
    assert f"MLflow UI:  {runs_url}" in served and runs_url in triggered  # the links printed go to the runs list
    runs = browser.page_text(runs_url, "mlflow-experiment", ("turn-1", "flywheel-curve"))
    assert "turn-1" in runs and "flywheel-curve" in runs, runs[:2000]
    model = browser.page_text(f"{services.mlflow_url}/#/models/flywheel-policy", "mlflow-model", ("champion",))
    assert "champion" in model and "Version 2" in model, model[:2000]


def test_the_services_are_stopped_by_pid(deployed):
    from stores.processes import is_running

    params, _, services, _, _ = deployed
    assert _flywheel(params, "stop").returncode == 0
    assert not any(is_running(pid) for pid in services.pids.values())
