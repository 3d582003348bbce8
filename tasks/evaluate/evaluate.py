"""The held-out scoreboard: the turn's starting model and the retrained candidate answer the same frozen held-out
items (never trained on: the held-out split is excluded from every training table), and each output is scored
against the item's human reference with the task's metrics (`task.metrics`: ROUGE-L F1 and MiniLM cosine similarity
for the caption task, exact match for a choice task). The same items and metrics every turn, so turn N+1 is
comparable with turn N. Each delta comes with a paired bootstrap 95% interval, and a free-text task's outputs'
diversity (distinct-2) and mean length are measured for the promotion gate's guardrails.

Input: `items` (held-out split: all of it, or the first `evaluate.items` in the seeded order), the candidate.
Output columns (`scoreboard`): item_id, role, model, caption, and one per reference metric (null where the task is
not scored on it): rouge_l, minilm_sim, exact_match.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from stores.schema import Column, TableSpec  # noqa: E402
from tasks.config import Sampling, Task  # noqa: E402
from tasks.metrics import (  # noqa: E402
    REFERENCE_METRICS,
    answer_entropy,
    distinct_n,
    mean_words,
    paired_bootstrap,
    reference_scores,
)
from tasks.prompts import prompt_messages, task_output  # noqa: E402
from tasks.stage import StageContext, StageDef, StageOutput  # noqa: E402

SCOREBOARD = TableSpec(
    "scoreboard",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("role", "VARCHAR", min_length=1),  # start | candidate
        Column("model", "VARCHAR", min_length=1),
        Column("caption", "VARCHAR"),
        Column("rouge_l", "DOUBLE", nullable=True, min_value=0.0, max_value=1.0),
        Column("minilm_sim", "DOUBLE", nullable=True, min_value=-1.0, max_value=1.0),
        Column("exact_match", "DOUBLE", nullable=True, min_value=0.0, max_value=1.0),
    ),
    key=("item_id", "role"),
)


def score_captions(items: pd.DataFrame, llm, sampling: Sampling, task: Task, role: str) -> pd.DataFrame:
    """The model behind `llm` answers `items`; each output is scored against the item's reference with every metric
    the task names (the others stay null)."""
    prompts = [prompt_messages(item, task) for item in items.to_dict("records")]
    one_line = task.output == "line"  # the rest of a completion is never read
    generations = llm.generate(prompts, sampling, [0] * len(prompts), f"evaluate/{role}", one_line=one_line)
    captions = [task_output(g.text, task) for g in generations]
    scores = reference_scores(captions, list(items["reference"]), task.metrics)
    unscored = {name: None for name in REFERENCE_METRICS if name not in scores}
    return pd.DataFrame(
        {"item_id": items["item_id"], "role": role, "model": llm.model.label, "caption": captions, **scores}
    ).assign(**unscored, reference=list(items["reference"]))


def summarize(scoreboard: pd.DataFrame, task: Task, seed: int, resamples: int = 2000) -> dict[str, float]:
    """Per role: mean of each of the task's metrics; for free text, distinct-2 and mean words of the outputs, for a
    choice task the answers' entropy over the choices (the references' too); candidate − start delta of each metric
    with its paired bootstrap 95% interval."""
    start = scoreboard[scoreboard["role"] == "start"].set_index("item_id").sort_index()
    candidate = scoreboard[scoreboard["role"] == "candidate"].set_index("item_id").loc[start.index]
    result = {"items": float(len(start))}
    if "reference" in start:  # what the gate holds the outputs' length (free text) or balance (choice) against
        key = "mean_words" if task.output == "line" else "answer_entropy"
        result[f"reference_{key}"] = output_measures(list(start["reference"]), task)[key]
    for role, board in (("start", start), ("candidate", candidate)):
        result |= {f"{role}_{k}": v for k, v in output_measures(list(board["caption"].fillna("")), task).items()}
    for metric in task.metrics:
        diff = candidate[metric].to_numpy() - start[metric].to_numpy()
        mean, low, high = paired_bootstrap(diff, seed, resamples)
        result |= {
            f"start_{metric}": float(start[metric].mean()),
            f"candidate_{metric}": float(candidate[metric].mean()),
            f"delta_{metric}": mean,
            f"delta_{metric}_ci_low": low,
            f"delta_{metric}_ci_high": high,
        }
    return result


def output_measures(outputs: list[str], task: Task) -> dict[str, float]:
    """What the gate guards against collapse: distinct-2 and mean words of free text, a choice task's answer entropy
    (a letter has no phrasing or length)."""
    if task.output == "choice":
        return {"answer_entropy": answer_entropy(outputs, task.choices)}
    return {"distinct_2": distinct_n(outputs, 2), "mean_words": mean_words(outputs)}


def chart(summary: dict[str, float], metrics: tuple[str, ...], start_label: str, candidate_label: str):
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = [summary[f"start_{metric}"], summary[f"candidate_{metric}"]]
        axis.bar([start_label, candidate_label], values, color=["#9d9da1", "#4c78a8"])
        low, high = summary[f"delta_{metric}_ci_low"], summary[f"delta_{metric}_ci_high"]
        axis.set_title(f"{metric}: Δ {values[1] - values[0]:+.3f} [{low:+.3f}, {high:+.3f}]", fontsize=9)
    figure.suptitle(f"Held-out scoreboard ({int(summary['items'])} items)")
    figure.tight_layout()
    return figure


def run(ctx: StageContext) -> StageOutput:
    cfg, task = ctx.settings.evaluate, ctx.settings.task
    heldout = ctx.items("heldout")
    heldout = heldout if cfg.items is None else heldout.head(cfg.items)
    candidate = ctx.registry.get(ctx.upstream_summary("retrain")["candidate_version"])
    scoreboard = pd.concat(
        [
            score_captions(heldout, ctx.llm, cfg.sampling, task, "start"),
            score_captions(heldout, ctx.llm_factory(candidate), cfg.sampling, task, "candidate"),
        ],
        ignore_index=True,
    )
    summary = summarize(scoreboard, task, ctx.settings.seed)
    scoreboard = scoreboard.drop(columns="reference")
    figure = chart(summary, task.metrics, ctx.start_model.label, candidate.label)
    ctx.log_scoreboard(figure, "scoreboard.png", summary, "heldout")
    ctx.mlrun.log_text(scoreboard.to_csv(index=False), "scoreboard.csv")
    facts = {"start_version": ctx.start_model.version, "candidate_version": candidate.version}
    return StageOutput({"scoreboard": scoreboard}, rows_in=len(heldout), metrics=summary, summary=facts)


STAGE = StageDef(
    name="evaluate",
    outputs=(SCOREBOARD,),
    upstream=("ingest", "context", "retrain"),
    sections=("data", "task", "evaluate"),
    run=run,
)
