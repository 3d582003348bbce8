"""Preference data in four steps (arXiv 2406.16486), each its own module and table, with TSO's model matrix, human
responses and human correction (arXiv 2409.02118) and Iter-W2S-RLAIF's response distribution set and external
scorer (arXiv 2411.16201):

1. prompts (`collect_prompts`): deduplicated, balanced across categories   → table preference_prompts
2. responses (`generate_responses`): model matrix + human references        → table preference_responses
3. filtering (`filter_responses`): degenerate responses, near ties, both bad → kept/reason in both tables
4. labelling (`label_pairs`): external scorer, human correction, queue      → preference_pairs, label_queue

`collect_pairs` runs steps 3–4 on generated responses; the retrain stage calls it again when it regenerates the
policy's responses between DPO rounds (TSO's iterative reference update), so both places label alike.

Input: `items` (this turn's train and human windows).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from stores.schema import Column, TableSpec
from tasks.config import Preference, Settings, Task
from tasks.preference.collect_prompts import collect_prompts, tag_counts
from tasks.preference.filter_responses import filter_responses, select_pairs
from tasks.preference.generate_responses import generate_responses, human_responses, resolve_matrix
from tasks.preference.label_pairs import (
    ai_labels,
    apply_human_labels,
    correct_with_references,
    labelling_queue,
    read_labels,
)
from tasks.preference.scorer import LLMJudge, ReferenceScorer, Scorer
from tasks.prompts import item_content
from tasks.stage import StageContext, StageDef, StageOutput

PROMPTS = TableSpec(
    "preference_prompts",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("split", "VARCHAR", min_length=1),
        Column("category", "VARCHAR", min_length=1),
        Column("kept", "BOOLEAN"),
        Column("reason", "VARCHAR"),
    ),
    key=("item_id",),
)
RESPONSES = TableSpec(
    "preference_responses",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("generator", "VARCHAR", min_length=1),
        Column("generator_version", "INTEGER", min_value=0),
        Column("response_idx", "INTEGER", min_value=0),
        Column("text", "VARCHAR", max_length=4000),
        Column("similarity", "DOUBLE", min_value=-1.0, max_value=1.0),
        Column("judge", "DOUBLE", nullable=True, min_value=0.0, max_value=1.0),
        Column("violations", "VARCHAR"),
        Column("score", "DOUBLE", min_value=-10.0, max_value=10.0),
        Column("kept", "BOOLEAN"),
        Column("reason", "VARCHAR"),
    ),
    key=("item_id", "generator", "response_idx"),
)
PAIRS = TableSpec(
    "preference_pairs",
    (
        Column("pair_id", "VARCHAR", min_length=16),
        Column("item_id", "VARCHAR", min_length=1),
        Column("chosen", "VARCHAR", min_length=1),
        Column("rejected", "VARCHAR", min_length=1),
        Column("chosen_generator", "VARCHAR", min_length=1),
        Column("rejected_generator", "VARCHAR", min_length=1),
        Column("chosen_score", "DOUBLE"),
        Column("rejected_score", "DOUBLE"),
        Column("label_source", "VARCHAR", min_length=1),  # ai | human_reference | human_label
        Column("corrected", "BOOLEAN"),
        Column("kept", "BOOLEAN"),
        Column("reason", "VARCHAR"),
    ),
    key=("item_id",),
)
LABEL_QUEUE = TableSpec(
    "label_queue",
    (
        Column("pair_id", "VARCHAR", min_length=16),
        Column("item_id", "VARCHAR", min_length=1),
        Column("response_a", "VARCHAR", min_length=1),
        Column("response_b", "VARCHAR", min_length=1),
        Column("ai_preferred", "VARCHAR", min_length=1),
        Column("human_preferred", "VARCHAR"),
        Column("status", "VARCHAR", min_length=1),
    ),
    key=("pair_id",),
)


def make_scorer(settings: Settings, get_version, client_for) -> Scorer | ReferenceScorer:
    cfg = settings.preference
    if settings.task.scorer == "reference":
        return ReferenceScorer(settings.task)
    judge = None
    if cfg.judge_version is not None:
        judge = LLMJudge(client_for(get_version(cfg.judge_version)), settings.task.max_field_chars)
    return Scorer(cfg.min_chars, cfg.max_chars, judge, cfg.judge_weight)


def collect_pairs(
    responses: pd.DataFrame,
    items: pd.DataFrame,
    task: Task,
    cfg: Preference,
    scorer: Scorer | ReferenceScorer,
    labels: dict[str, str],
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Steps 3–4 on unscored responses: (scored + filtered responses, labelled pairs, labelling queue)."""
    indexed = items.set_index("item_id")
    if scorer.against == "reference":
        targets = indexed["reference"]
    else:
        targets = indexed.apply(lambda item: item_content(item.to_dict(), task), axis=1)
    scored = responses.reset_index(drop=True)
    scored = scored.assign(**scorer(list(scored["text"]), [targets[i] for i in scored["item_id"]]))
    filtered = filter_responses(scored)
    pairs = ai_labels(select_pairs(filtered, cfg.min_score_gap, cfg.min_chosen_score))
    if cfg.correct_with_humans:
        pairs = correct_with_references(pairs, filtered)
    queue = labelling_queue(pairs, cfg.human_label_share, seed)
    if cfg.correct_with_humans:
        pairs, queue = apply_human_labels(pairs, queue, labels)
    return filtered, pairs, queue


def model_roles(ctx: StageContext) -> dict:
    previous = ctx.store.turn_start_version(ctx.registry.name, ctx.turn - 1) if ctx.turn > 1 else None
    return {
        "champion": ctx.start_model,
        "previous": ctx.registry.get(previous) if previous is not None else None,
        "base": ctx.registry.find(origin="packaged-gguf"),
    }


def step_counts(prompts, responses, pairs, queue) -> dict[str, float]:
    kept_pairs = pairs[pairs["kept"]] if len(pairs) else pairs
    return {
        "prompts_candidates": len(prompts),
        "prompts_exact_duplicates": int((prompts["reason"] == "exact_duplicate").sum()),
        "prompts_near_duplicates": int((prompts["reason"] == "near_duplicate").sum()),
        "prompts": int(prompts["kept"].sum()),
        "responses": len(responses),
        "responses_human": int((responses["generator"] == "human").sum()),
        "responses_filtered": int((~responses["kept"]).sum()),
        "pairs_candidates": len(pairs),
        "pairs_near_tie": int((pairs["reason"] == "near_tie").sum()),
        "pairs_both_bad": int((pairs["reason"] == "both_bad").sum()),
        "pairs": len(kept_pairs),
        "pairs_queued": len(queue),
        "pairs_human_labelled": int((queue["status"] == "labelled").sum()),
        "pairs_corrected": int(kept_pairs["corrected"].sum()) if len(kept_pairs) else 0,
        "mean_gap": float(np.mean(kept_pairs["chosen_score"] - kept_pairs["rejected_score"]))
        if len(kept_pairs)
        else 0.0,
    }


def run(ctx: StageContext) -> StageOutput:
    settings, cfg = ctx.settings, ctx.settings.preference
    pool = pd.concat(
        [
            ctx.turn_slice("train", cfg.prompts_per_turn * cfg.pool_factor),
            ctx.turn_slice("human", cfg.human_prompts_per_turn * cfg.pool_factor),
        ],
        ignore_index=True,
    )
    quotas = {"train": cfg.prompts_per_turn, "human": cfg.human_prompts_per_turn}
    counts = tag_counts(ctx.read("ingest", "items"))
    prompts = collect_prompts(pool, quotas, counts, cfg.near_duplicate, settings.task)
    items = pool[prompts["kept"].to_numpy()]
    generators, skipped = resolve_matrix(cfg.matrix, model_roles(ctx), ctx.registry.get, cfg.max_new_tokens)
    responses = generate_responses(items, generators, ctx.llm_factory, settings.task, settings.seed)
    responses = pd.concat([responses, human_responses(items, settings.task)], ignore_index=True)
    scorer = make_scorer(settings, ctx.registry.get, ctx.llm_factory)
    labels = read_labels(settings.path("labels"))
    responses, pairs, queue = collect_pairs(responses, items, settings.task, cfg, scorer, labels, settings.seed)
    metrics = step_counts(prompts, responses, pairs, queue)
    kept_categories = prompts[prompts["kept"]]["category"].value_counts().sort_index()
    summary = {
        "generators": [g.label for g in generators],
        "skipped_cells": skipped,
        "category_counts": {str(k): int(v) for k, v in kept_categories.items()},
        "human_signal": "human labels + references" if metrics["pairs_human_labelled"] else "human references only",
    }
    ctx.mlrun.log_text(json.dumps({**summary, "step_counts": metrics}, indent=2), "preference_steps.json")
    tables = {"preference_prompts": prompts, "preference_responses": responses, "preference_pairs": pairs}
    return StageOutput(
        {**tables, "label_queue": queue},
        rows_in=len(pool),
        metrics={**metrics, "categories": len(kept_categories)},
        summary=summary,
    )


def labels_fingerprint(settings: Settings) -> str:
    """Human labels are an input: new labels make a new batch (a missing file counts as an empty one)."""
    path = settings.path("labels")
    return hashlib.sha256(path.read_bytes() if path.exists() else b"").hexdigest()[:16]


STAGE = StageDef(
    name="preference",
    outputs=(PROMPTS, RESPONSES, PAIRS, LABEL_QUEUE),
    upstream=("ingest", "context"),
    sections=("data", "task", "preference"),
    run=run,
    input_fingerprint=labels_fingerprint,
)
