"""Preference data: several sampled responses per prompt, scored by the external scorer; per prompt the best and the
worst become chosen and rejected when the scorer separates them clearly. The four-step collection, TSO and
Iter-W2S-RLAIF replace this in their own issue, behind the same tables.

Input: `items` (train split, this turn's window).
Output columns (`responses`): item_id, response_idx, text, similarity, violations, score.
Output columns (`pairs`): item_id, chosen, rejected, chosen_score, rejected_score, gap.
"""

from __future__ import annotations

import pandas as pd

from stores.schema import Column, TableSpec
from tasks.config import Preference
from tasks.preference.scorer import RULE_PENALTY, score_responses
from tasks.prompts import sample_captions
from tasks.stage import StageContext, StageDef, StageOutput

RESPONSES = TableSpec(
    "responses",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("response_idx", "INTEGER", min_value=0),
        Column("text", "VARCHAR", max_length=4000),
        Column("similarity", "DOUBLE", min_value=-1.0, max_value=1.0),
        Column("violations", "VARCHAR"),
        Column("score", "DOUBLE", min_value=-1.0 - 5 * RULE_PENALTY, max_value=1.0),
    ),
    key=("item_id", "response_idx"),
)
PAIRS = TableSpec(
    "pairs",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("chosen", "VARCHAR", min_length=1),
        Column("rejected", "VARCHAR"),
        Column("chosen_score", "DOUBLE"),
        Column("rejected_score", "DOUBLE"),
        Column("gap", "DOUBLE", min_value=0.0),
    ),
    key=("item_id",),
)


def item_content(item: dict) -> str:
    return item.get("abstract") or item.get("comment") or ""


def sample_responses(items: pd.DataFrame, llm, cfg: Preference, max_signal_chars: int, seed: int) -> pd.DataFrame:
    samples = sample_captions(items, llm, cfg.responses_per_prompt, cfg.sampling, max_signal_chars, seed, "preference")
    texts = [g.text.strip() for _, _, g in samples]
    contents = [item_content(item) for item, _, _ in samples]
    sims, violations, scores = score_responses(texts, contents, cfg.min_chars, cfg.max_chars)
    return pd.DataFrame(
        {
            "item_id": [item["item_id"] for item, _, _ in samples],
            "response_idx": [index for _, index, _ in samples],
            "text": texts,
            "similarity": sims,
            "violations": [",".join(v) for v in violations],
            "score": scores,
        }
    )


def make_pairs(responses: pd.DataFrame, min_score_gap: float) -> pd.DataFrame:
    """Best vs worst per item; kept when the best breaks no rule and the gap is at least min_score_gap."""
    rows = []
    for item_id, group in responses.groupby("item_id", sort=True):
        ranked = group.sort_values(["score", "response_idx"], ascending=[False, True])
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        gap = float(best["score"] - worst["score"])
        if best["violations"] or gap < min_score_gap or best["text"] == worst["text"]:
            continue
        rows.append((item_id, best["text"], worst["text"], float(best["score"]), float(worst["score"]), gap))
    return pd.DataFrame(rows, columns=list(PAIRS.column_names))


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.settings.preference
    items = ctx.turn_slice("train", cfg.prompts_per_turn)
    responses = sample_responses(items, ctx.llm, cfg, ctx.settings.data.max_signal_chars, ctx.settings.seed)
    pairs = make_pairs(responses, cfg.min_score_gap)
    metrics = {
        "prompts": len(items),
        "responses": len(responses),
        "responses_with_violations": int((responses["violations"] != "").sum()),
        "pairs": len(pairs),
        "mean_gap": float(pairs["gap"].mean()) if len(pairs) else 0.0,
    }
    return StageOutput({"responses": responses, "pairs": pairs}, rows_in=len(items), metrics=metrics)


STAGE = StageDef(
    name="preference",
    outputs=(RESPONSES, PAIRS),
    upstream=("ingest",),
    sections=("data", "preference"),
    run=run,
)
