"""Promotion gate: the candidate becomes `champion` only if its held-out primary metric beats the turn's starting
model by more than `promote.min_delta`. The decision, both scores and the reason are recorded (table + MLflow).
The alias only ever points at a complete model folder (weights verified against the registered fingerprint).
If the champion moved while this turn ran, nothing is promoted: the comparison would be against a stale model.
A rerun never moves the alias twice (the stage's batch is recorded once, and a candidate that is already champion,
e.g. after an interruption between the alias move and the record, is reported as such).

Input: `evaluate`'s summary. Output columns (`promotions`): turn, start_version, candidate_version, metric,
start_score, candidate_score, delta, promoted, reason.
"""

from __future__ import annotations

import pandas as pd

from stores.schema import Column, TableSpec
from tasks.stage import StageContext, StageDef, StageOutput

PROMOTIONS = TableSpec(
    "promotions",
    (
        Column("turn", "INTEGER", min_value=1),
        Column("start_version", "INTEGER", min_value=1),
        Column("candidate_version", "INTEGER", min_value=1),
        Column("metric", "VARCHAR", min_length=1),
        Column("start_score", "DOUBLE"),
        Column("candidate_score", "DOUBLE"),
        Column("delta", "DOUBLE"),
        Column("promoted", "BOOLEAN"),
        Column("reason", "VARCHAR", min_length=1),
    ),
    key=("turn",),
    item_level=False,
)


def decide(start_score: float, candidate_score: float, min_delta: float) -> tuple[bool, str]:
    delta = candidate_score - start_score
    if delta > min_delta:
        return True, f"candidate beat the champion by {delta:+.4f} (> {min_delta})"
    return False, f"candidate did not beat the champion by more than {min_delta} (delta {delta:+.4f})"


def run(ctx: StageContext) -> StageOutput:
    evaluation = ctx.upstream_summary("evaluate")
    metric = ctx.settings.promote.primary_metric
    start_score, candidate_score = (
        evaluation["metrics"][f"start_{metric}"],
        evaluation["metrics"][f"candidate_{metric}"],
    )
    start, candidate = evaluation["start_version"], evaluation["candidate_version"]
    champion = ctx.registry.champion().version
    if champion == candidate:
        promoted, reason = True, f"v{candidate} is already champion (an earlier run of this gate promoted it)"
    elif champion != start:
        promoted, reason = False, f"champion moved to v{champion} during this turn; rerun the turn from it"
    else:
        promoted, reason = decide(start_score, candidate_score, ctx.settings.promote.min_delta)
        if promoted:
            ctx.registry.promote(candidate)  # refuses a folder that is not whole
    row = {
        "turn": ctx.turn,
        "start_version": start,
        "candidate_version": candidate,
        "metric": metric,
        "start_score": start_score,
        "candidate_score": candidate_score,
        "delta": candidate_score - start_score,
        "promoted": promoted,
        "reason": reason,
    }
    ctx.turn_run.set_tags({"flywheel.promoted": promoted, "flywheel.promotion_reason": reason})
    ctx.turn_run.log_metrics({"promoted": float(promoted)}, step=ctx.turn)
    metrics = {"promoted": float(promoted), "start_score": start_score, "candidate_score": candidate_score}
    return StageOutput({"promotions": pd.DataFrame([row])}, rows_in=1, metrics=metrics, summary=row)


STAGE = StageDef(
    name="promote", outputs=(PROMOTIONS,), upstream=("evaluate",), sections=("promote",), run=run, uses_model=False
)
