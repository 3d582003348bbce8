"""Prefect deployments, made from this checkout by one command (`flywheel deploy`):

- `flywheel-stage/gpu` on `gpu-pool` and `flywheel-stage/cpu` on `cpu-pool`: one stage per flow run; the turn flow
  sends each stage to the pool its declaration asks for under the params (`StageDef.uses_model_in`: generate, score
  or train -> gpu);
- `flywheel/scheduled` on `cpu-pool`: N turns on a cron schedule (none: run it by hand or with `flywheel trigger`),
  dispatching its stages to the two stage deployments.

The code is loaded from this folder by the process workers (`from_source` on a local path); on a cluster the same
deployments point at a git repository or an image instead (infra/README.md).
"""

from __future__ import annotations

from pathlib import Path

from flows.services import CPU_POOL, GPU_POOL

REPO = Path(__file__).resolve().parents[1]
SCHEDULED = "flywheel/scheduled"


def ensure_pools() -> None:
    """Both work pools, type `process` (on a machine without a GPU the gpu-pool worker is one more process worker)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for pool in (CPU_POOL, GPU_POOL):
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass


def deploy(params: Path, turns: int = 1, cron: str | None = None) -> list[str]:
    """Create (or update) the three deployments; returns their names."""
    from prefect import flow

    ensure_pools()
    stage_flow = flow.from_source(source=str(REPO), entrypoint="flows/turn.py:flywheel_stage")
    for pool, work_pool in (("gpu", GPU_POOL), ("cpu", CPU_POOL)):
        stage_flow.deploy(name=pool, work_pool_name=work_pool, build=False, push=False, print_next_steps=False)
    turns_flow = flow.from_source(source=str(REPO), entrypoint="flows/turn.py:flywheel")
    turns_flow.deploy(
        name=SCHEDULED.split("/")[1],
        work_pool_name=CPU_POOL,
        parameters={"turns": turns, "params": str(params.resolve()), "dispatch": "deployments"},
        cron=cron,
        build=False,
        push=False,
        print_next_steps=False,
    )
    return ["flywheel-stage/gpu", "flywheel-stage/cpu", SCHEDULED]


def trigger(turns: int | None = None) -> list[list[dict]]:
    """Run the scheduled deployment now and wait for it; its per-turn stage results."""
    from prefect.deployments import run_deployment

    from tasks.errors import FlywheelError

    run = run_deployment(SCHEDULED, parameters={} if turns is None else {"turns": turns}, poll_interval=2)
    if not run.state.is_completed():
        raise FlywheelError(f"{SCHEDULED} run {run.name} ended {run.state.name}: {run.state.message}")
    return run.state.result()
