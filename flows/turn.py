"""Prefect flows: `flywheel_turn` runs one turn, one task per stage; `flywheel` runs N turns, each starting from the
model that is `champion` when it starts. Every task calls `tasks.runner.run_stage`, the same function as `flywheel
stage NAME` and the `dvc.yaml` cmds, so the three ways to run a stage cannot drift apart.

Run: `flywheel run --turns 1` (or `python -m flows.turn`). Without PREFECT_API_URL Prefect runs in ephemeral mode
(no server to start); with it, runs are recorded on that server. A stage that may call a model server (generate,
score, train) and failed for it is retried with backoff. The tasks carry no tags: Prefect checks a tagged task run's
tag concurrency limits with a server call, which on the ephemeral SQLite server met "database is locked" and a 2 s
client retry before almost every stage (~20 s a turn); the work pools, not tags, keep GPU and CPU stages apart.
After the last stage the turn's data is published as a DVC version (tasks/publish). Prefect's own task cache is off:
the store records finished batches, so a rerun or a resumed turn skips finished stages without a model call. A turn
holds the store's run lock (stores/lock.py): two turns on one store never interleave.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.summary import stage_line
from stores.lock import run_lock
from tasks.config import load_settings
from tasks.errors import FlywheelError, ModelServerError
from tasks.publish import DataVersion, publish_turn
from tasks.runner import STAGES, next_turn, run_stage

MODEL_SERVER_RETRIES = 2  # a stage whose model server failed (after its own request retries) is retried this often


def _model_server_failed(task, task_run, state) -> bool:
    """Retry only failures a later attempt can fix; a rerun resumes from the LLM-call cache, repeating no call."""
    return isinstance(state.data, ModelServerError)


def _stage_task(name: str):
    stage = STAGES[name]
    uses_model = stage.uses_model or stage.model_when is not None  # may call a model server: retried

    @task(
        name=name,
        cache_policy=NO_CACHE,
        retries=MODEL_SERVER_RETRIES if uses_model else 0,
        retry_delay_seconds=exponential_backoff(backoff_factor=30),
        retry_condition_fn=_model_server_failed,
    )
    def stage(params: str, turn: int, overrides: dict | None = None) -> dict:
        tags = {"prefect.flow_run_id": str(flow_run.get_id() or "")}
        return asdict(run_stage(name, load_settings(params, overrides), turn, tags))

    return stage


STAGE_TASKS = {name: _stage_task(name) for name in STAGES}


@task(name="publish", cache_policy=NO_CACHE)
def publish(params: str, turn: int, overrides: dict | None = None) -> dict:
    """The finished turn's data as a DVC version pushed to the remote (tasks/publish), in the flow's process."""
    return asdict(publish_turn(load_settings(params, overrides), turn))


Dispatch = Literal["local", "deployments"]


@flow(name="flywheel-stage")
def flywheel_stage(name: str, turn: int = 1, params: str = "params.yaml", overrides: dict | None = None) -> dict:
    """One stage as a flow run of its own: what the `flywheel-stage/gpu` and `/cpu` deployments run on their pools."""
    return STAGE_TASKS[name](params, turn, overrides)


def _run_on_pool(name: str, turn: int, params: str, overrides: dict | None) -> dict:
    """The stage as a run of the deployment for its pool; the key makes a retried turn find, not repeat, it."""
    pool = "gpu" if STAGES[name].uses_model_in(load_settings(params, overrides)) else "cpu"
    child = run_deployment(
        f"flywheel-stage/{pool}",
        parameters={"name": name, "turn": turn, "params": params, "overrides": overrides},
        idempotency_key=f"{flow_run.get_id()}:{name}:{turn}",
        poll_interval=2,
    )
    if not child.state.is_completed():
        raise FlywheelError(f"stage {name} of turn {turn} ended {child.state.name} on the {pool} pool: {child.name}")
    return child.state.result()


@flow(name="flywheel_turn")
def flywheel_turn(
    turn: int = 1, params: str = "params.yaml", dispatch: Dispatch = "local", overrides: dict | None = None
) -> list[dict]:
    """One turn, stage after stage, holding the store's run lock (a second run on the same store fails clearly).
    `local` runs each stage as a task in this process; `deployments` runs it on its work pool's worker.
    `overrides` are merged onto the params file (an experiment arm is one)."""
    with run_lock(load_settings(params, overrides).path("store")):
        results = []
        for name in STAGES:
            if dispatch == "deployments":
                result = _run_on_pool(name, turn, params, overrides)
            else:
                result = STAGE_TASKS[name](params, turn, overrides)
            print(stage_line(result), flush=True)
            results.append(result)
        print(DataVersion(**publish(params, turn, overrides)).line(), flush=True)
        return results


@flow(name="flywheel")
def flywheel(
    turns: int = 1,
    first_turn: int | None = None,
    params: str = "params.yaml",
    dispatch: Dispatch = "local",
    overrides: dict | None = None,
) -> list[list[dict]]:
    """N turns from `first_turn`, or (None: the CLI's and a schedule's default) from the lineage's next turn: an
    unfinished turn is resumed, a finished one is not redone."""
    if first_turn is None:
        first_turn = next_turn(load_settings(params, overrides))
    return [
        flywheel_turn(turn=turn, params=params, dispatch=dispatch, overrides=overrides)
        for turn in range(first_turn, first_turn + turns)
    ]


if __name__ == "__main__":
    flywheel()
