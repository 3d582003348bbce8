"""What the benchmarks share: a throwaway project (params file, store, MLflow) under .cache/bench/, and logging a
result to the MLflow experiment `flywheel-bench`."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.project import REPO, link_shared


def project_settings(work: Path, name: str, overrides: dict):
    """Settings of a project in `work` (store, exports, MLflow there; the model cache shared with the repository):
    the repository's params.yaml with `overrides` merged key by key, written to params-<name>.yaml."""
    from tasks.config import load_settings, merge_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge_params(params, overrides)
    link_shared(work)
    path = work / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_settings(path)


def log_bench_run(run_name: str, params: dict, metrics: dict[str, float], artifact: Path, mlflow_dir: Path) -> None:
    import mlflow
    from stores import tracking

    experiment = tracking.configure(mlflow_dir, "flywheel-bench")
    with mlflow.start_run(experiment_id=experiment, run_name=run_name):
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(artifact))
