"""Prefect flows: `flywheel_turn` runs one turn, one task per stage; `flywheel` runs N turns, each starting from the
model that is `champion` when it starts. Every task calls `tasks.runner.run_stage`, the same function as `flywheel
stage NAME` and the `dvc.yaml` cmds, so the three ways to run a stage cannot drift apart.

Run: `flywheel run --turns 1` (or `python -m flows.turn`). Without PREFECT_API_URL Prefect runs in ephemeral mode
(no server to start); with it, runs are recorded on that server. Stages that generate, score or train are tagged
`gpu`, the rest `cpu`, for work-pool routing; a model stage whose server failed is retried with backoff. Prefect's
own task cache is off: the store records finished batches, so a rerun or a resumed turn skips finished stages
without a model call. A turn holds the store's run lock (stores/lock.py): two turns on one store never interleave.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from stores.lock import run_lock
from tasks.config import load_settings
from tasks.errors import ModelServerError
from tasks.runner import STAGES, run_stage

MODEL_SERVER_RETRIES = 2  # a stage whose model server failed (after its own request retries) is retried this often


def _model_server_failed(task, task_run, state) -> bool:
    """Retry only failures a later attempt can fix; a rerun resumes from the LLM-call cache, repeating no call."""
    return isinstance(state.data, ModelServerError)


def _stage_task(name: str):
    uses_model = STAGES[name].uses_model

    @task(
        name=name,
        tags=["gpu" if uses_model else "cpu"],
        cache_policy=NO_CACHE,
        retries=MODEL_SERVER_RETRIES if uses_model else 0,
        retry_delay_seconds=exponential_backoff(backoff_factor=30),
        retry_condition_fn=_model_server_failed,
    )
    def stage(params: str, turn: int) -> dict:
        tags = {"prefect.flow_run_id": str(flow_run.get_id() or "")}
        return asdict(run_stage(name, load_settings(params), turn, tags))

    return stage


ingest = _stage_task("ingest")
context = _stage_task("context")
annotate = _stage_task("annotate")
denoise = _stage_task("denoise")
preference = _stage_task("preference")
rewrite = _stage_task("rewrite")
retrain = _stage_task("retrain")
evaluate = _stage_task("evaluate")
promote = _stage_task("promote")


@flow(name="flywheel_turn", log_prints=True)
def flywheel_turn(turn: int = 1, params: str = "params.yaml") -> list[dict]:
    """One turn, stage after stage, holding the store's run lock (a second run on the same store fails clearly)."""
    with run_lock(load_settings(params).path("store")):
        return [
            ingest(params, turn),
            context(params, turn),
            annotate(params, turn),
            denoise(params, turn),
            preference(params, turn),
            rewrite(params, turn),
            retrain(params, turn),
            evaluate(params, turn),
            promote(params, turn),
        ]


@flow(name="flywheel", log_prints=True)
def flywheel(turns: int = 1, first_turn: int = 1, params: str = "params.yaml") -> list[list[dict]]:
    return [flywheel_turn(turn=turn, params=params) for turn in range(first_turn, first_turn + turns)]


if __name__ == "__main__":
    flywheel()
