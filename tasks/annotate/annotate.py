"""Synthetic annotation: the turn's model as the `refine` stage left it (refined on the turn's human titles, or the
champion where refinement is off), or a named teacher version (`annotate.teacher_version`), captions each of the
turn's train items from all of its signals (the prompt template lives in tasks/prompts.py). Both go through the
same cached generation backend.

Several candidates per item (count and sampling are params); each keeps its mean and min token log-prob and its
length, which the noise control reads. Generation stops at the end of the caption's line (the line break's log-prob
is its last), or at `max_new_tokens` (`finished` false). Empty captions fail validation and land in quarantine.

The same annotator also annotates the dataset-quality probe (train items set aside from every window, the same
items every turn) with the same sampling; its quality against the probe's human titles, turn after turn, is the
curve of how good the flywheel's synthetic data gets (metrics `probe_*`; the titles are never trained on).

Input: `items` (train split, this turn's window; the probe).
Output columns (`annotations`): item_id, candidate, caption, mean_logprob, min_logprob, n_tokens, finished, annotator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stores.schema import Column, TableSpec
from tasks.config import Annotate, Task
from tasks.metrics import distinct_n, reference_scores
from tasks.prompts import sample_captions, task_output
from tasks.stage import StageContext, StageDef, StageOutput

ANNOTATIONS = TableSpec(
    "annotations",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("candidate", "INTEGER", min_value=0),
        Column("caption", "VARCHAR", min_length=1, max_length=400),
        Column("mean_logprob", "DOUBLE", max_value=0.0),
        Column("min_logprob", "DOUBLE", max_value=0.0),
        Column("n_tokens", "INTEGER", min_value=1),
        Column("finished", "BOOLEAN"),
        Column("annotator", "VARCHAR", min_length=1),
    ),
    key=("item_id", "candidate"),
)


def annotate(items: pd.DataFrame, llm, cfg: Annotate, task: Task, seed: int) -> pd.DataFrame:
    samples = sample_captions(items, llm, cfg.candidates, cfg.sampling, task, seed, "annotate")
    return pd.DataFrame(
        {
            "item_id": [item["item_id"] for item, _, _ in samples],
            "candidate": [candidate for _, candidate, _ in samples],
            "caption": [task_output(g.text, task) for _, _, g in samples],
            "mean_logprob": [float(np.mean(g.token_logprobs)) for _, _, g in samples],
            "min_logprob": [float(np.min(g.token_logprobs)) for _, _, g in samples],
            "n_tokens": [len(g.token_ids) for _, _, g in samples],
            "finished": [g.finished for _, _, g in samples],
            "annotator": llm.model.label,
        }
    )


def probe_quality(probe: pd.DataFrame, llm, cfg: Annotate, task: Task, seed: int) -> dict[str, float]:
    """The annotator's captions of the probe items, scored against their human titles."""
    if probe.empty:
        return {}
    samples = sample_captions(probe, llm, 1, cfg.sampling, task, seed, "probe")
    captions = [task_output(g.text, task) for _, _, g in samples]
    scores = reference_scores(captions, [item["reference"] for item, _, _ in samples], task.metrics)
    return {f"probe_{name}": float(np.mean(values)) for name, values in scores.items()} | {
        "probe_distinct_2": distinct_n(captions, 2)
    }


def run(ctx: StageContext) -> StageOutput:
    cfg, task, seed = ctx.settings.annotate, ctx.settings.task, ctx.settings.seed
    items = ctx.turn_slice("train", cfg.items_per_turn)
    teacher = ctx.turn_model if cfg.teacher_version is None else ctx.registry.get(cfg.teacher_version)
    annotator = ctx.llm_factory(teacher)
    frame = annotate(items, annotator, cfg, task, seed)
    metrics = {"mean_logprob": float(frame["mean_logprob"].mean()), "unfinished": int((~frame["finished"]).sum())}
    metrics |= probe_quality(ctx.probe(), annotator, cfg, task, seed)
    return StageOutput({"annotations": frame}, rows_in=len(items), metrics=metrics)


STAGE = StageDef(
    name="annotate",
    outputs=(ANNOTATIONS,),
    upstream=("ingest", "context", "refine"),
    sections=("data", "task", "annotate"),
    run=run,
)
