"""Promotion gate: the candidate becomes `champion` only on evidence that it beats the turn's starting model on the
held-out primary metric: by default the lower end of the paired bootstrap 95% interval of the delta must exceed
`promote.min_delta` (`evidence: point` compares the mean delta instead). Guardrails known to bite self-training
loops must hold too: held-out output diversity (distinct-2; a choice task's answer entropy, so a candidate that
answers one letter for everything is refused) may not fall by more than `max_diversity_drop`, the mean
output length must stay inside `length_band` of the human references' mean length or move towards it (length
exploitation drifts away from it; a model learning human-length titles moves towards it), and each other metric the
task is scored on must not have its interval lie wholly below zero (a choice task's answers have no length to
guard). Every guard's value and verdict is recorded (table + MLflow).
The alias only ever points at a complete model folder (weights verified against the registered fingerprint).
If the champion moved while this turn ran, nothing is promoted: the comparison would be against a stale model.
A rerun never moves the alias twice (the stage's batch is recorded once, and a candidate that is already champion,
e.g. after an interruption between the alias move and the record, is reported as such).

Input: `evaluate`'s summary. Output columns (`promotions`): turn, start_version, candidate_version, metric,
start_score, candidate_score, delta, promoted, reason, guards (JSON: each guard's value, bound and verdict).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from stores.schema import Column, TableSpec
from tasks.config import Promote
from tasks.metrics import REFERENCE_METRICS
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
        Column("guards", "VARCHAR"),
    ),
    key=("turn",),
    item_level=False,
)


def guards(metrics: dict[str, float], cfg: Promote) -> dict[str, dict]:
    """Each check the candidate must pass: its measured value, the bound it is held to, and whether it passed."""
    primary = cfg.primary_metric
    secondaries = [m for m in REFERENCE_METRICS if m != primary and f"delta_{m}_ci_high" in metrics]
    name = f"delta_{primary}_ci_low" if cfg.evidence == "ci_low" else f"delta_{primary}"
    checks = {name: (metrics[name], cfg.min_delta, metrics[name] > cfg.min_delta)}
    for diversity in ("distinct_2", "answer_entropy"):  # free text's, a choice task's (the scoreboard has one)
        if f"start_{diversity}" in metrics:
            floor = (1 - cfg.max_diversity_drop) * metrics[f"start_{diversity}"]
            value = metrics[f"candidate_{diversity}"]
            checks[diversity] = (value, floor, value >= floor)
    if "start_mean_words" in metrics:
        reference = max(metrics["reference_mean_words"], 1e-9)
        ratio, before = metrics["candidate_mean_words"] / reference, metrics["start_mean_words"] / reference
        low, high = cfg.length_band
        towards = abs(np.log(max(ratio, 1e-9))) <= abs(np.log(max(before, 1e-9)))
        bound = f"[{low}, {high}] or closer to 1 than {before:.2f}"
        checks["length_ratio"] = (ratio, bound, low <= ratio <= high or towards)
    for secondary in secondaries if cfg.secondary_must_hold else ():
        high_end = metrics[f"delta_{secondary}_ci_high"]
        checks[f"{secondary}_ci_high"] = (high_end, 0.0, high_end >= 0.0)
    return {name: {"value": value, "bound": bound, "passed": bool(ok)} for name, (value, bound, ok) in checks.items()}


def decide(metrics: dict[str, float], cfg: Promote) -> tuple[bool, str, dict[str, dict]]:
    checks = guards(metrics, cfg)
    bound = lambda b: f"{b:.4f}" if isinstance(b, float) else b  # noqa: E731
    failed = [f"{name} {c['value']:.4f} (bound {bound(c['bound'])})" for name, c in checks.items() if not c["passed"]]
    delta = metrics[f"delta_{cfg.primary_metric}"]
    low, high = metrics[f"delta_{cfg.primary_metric}_ci_low"], metrics[f"delta_{cfg.primary_metric}_ci_high"]
    evidence = f"delta {delta:+.4f} [{low:+.4f}, {high:+.4f}]"
    if failed:
        return False, f"not promoted: {evidence}; failed: {'; '.join(failed)}", checks
    return True, f"candidate beat the champion: {evidence}; all {len(checks)} checks passed", checks


def run(ctx: StageContext) -> StageOutput:
    evaluation = ctx.upstream_summary("evaluate")
    metric = ctx.settings.promote.primary_metric
    start_score, candidate_score = (
        evaluation["metrics"][f"start_{metric}"],
        evaluation["metrics"][f"candidate_{metric}"],
    )
    start, candidate = evaluation["start_version"], evaluation["candidate_version"]
    champion = ctx.registry.champion().version
    promoted, reason, checks = decide(evaluation["metrics"], ctx.settings.promote)
    if champion == candidate:
        promoted, reason = True, f"v{candidate} is already champion (an earlier run of this gate promoted it)"
    elif champion != start:
        promoted, reason = False, f"champion moved to v{champion} during this turn; rerun the turn from it"
    elif promoted:
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
        "guards": json.dumps(checks, sort_keys=True),
    }
    ctx.turn_run.set_tags({"flywheel.promoted": promoted, "flywheel.promotion_reason": reason})
    gate = {f"gate_{name}": c["value"] for name, c in checks.items() if isinstance(c["value"], float)}
    gate |= {f"gate_{name}_passed": float(c["passed"]) for name, c in checks.items()}
    ctx.turn_run.log_metrics({"promoted": float(promoted), **gate}, step=ctx.turn)
    metrics = {"promoted": float(promoted), "start_score": start_score, "candidate_score": candidate_score, **gate}
    return StageOutput({"promotions": pd.DataFrame([row])}, rows_in=1, metrics=metrics, summary=row)


STAGE = StageDef(
    name="promote", outputs=(PROMOTIONS,), upstream=("evaluate",), sections=("promote",), run=run, uses_model=False
)
