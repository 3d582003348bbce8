"""Noise control: every annotation gets a noise score from the turn's model (the annotator, refined on the turn's
human titles), the noisy tail is dropped (recorded, not deleted) and the kept annotations train with the method's
TaiLr γ (`retrain` reads it from this stage).

The noise score (`denoise.score`: NLL, PMI against the item-less prompt, MiniLM content distance, contrast against the
item's closest other items, or a fit of the four on trusted human-split pairs; tasks/denoise/scores.py) and the
method (`denoise.method`: AdaTaiLr by default, tasks/denoise/adatailr.py, or the baselines no control, fixed-γ TaiLr,
small-loss filtering and a two-component GMM, tasks/denoise/methods.py) are params. Token log-probs come through the
LLM-call cache; scoring the model's own finished generations costs nothing.

Best-of-n (`denoise.select: best` or `consensus`, with `annotate.candidates` > 1): only each item's best candidate goes
before the method, the others are recorded as outranked. Training on the model's best of several samples (rejection
sampling, expert iteration) is what can make its own annotations better than its single samples. `best` picks by the
noise score; `consensus` by agreement with the item's other candidates, closeness to its content and NLL together
(tasks/denoise/methods.py), because the model's NLL of its own samples loses its edge once it has trained on
NLL-picked samples.

Dataset quality: the annotations are scored against their items' human titles (train titles, never trained on, so a
fair measure): ROUGE-L and MiniLM similarity of all, kept, dropped and outranked annotations (what noise control drops
should be worse than what it keeps), the kept ones' distinct-2 diversity, and what each best-of-n pick (NLL,
consensus, random) would have sent on, so every turn shows whether its selector still beats chance.

Input: `annotations`, `items` (and this turn's human-split window for the fitted score).
Output columns (`denoised`): item_id, candidate, caption, method, noise_score, threshold, kept, reason.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stores.schema import Column, TableSpec  # noqa: E402
from tasks.config import Denoise, Task  # noqa: E402
from tasks.denoise.methods import Decision, best_per_item, consensus, decide, mean_nll, with_outranked  # noqa: E402
from tasks.denoise.scores import content_distance, features, fit_trusted, noise_scores, token_logprobs, trusted_pairs  # noqa: E402
from tasks.errors import InputError  # noqa: E402
from tasks.metrics import REFERENCE_METRICS, distinct_n, reference_scores  # noqa: E402
from tasks.stage import StageContext, StageDef, StageOutput  # noqa: E402

DENOISED = TableSpec(
    "denoised",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("candidate", "INTEGER", min_value=0),
        Column("caption", "VARCHAR", min_length=1),
        Column("method", "VARCHAR", min_length=1),
        Column("noise_score", "DOUBLE"),
        Column("threshold", "DOUBLE"),
        Column("kept", "BOOLEAN"),
        Column("reason", "VARCHAR"),
    ),
    key=("item_id", "candidate"),
)


def noise_decision(
    cfg: Denoise, annotations: pd.DataFrame, items: pd.DataFrame, trusted: pd.DataFrame, llm, task: Task, seed: int
) -> tuple[Decision, dict]:
    """The method's decision on `annotations` (item_id, caption) of `items`, ranked by `cfg.score`; `trusted` are
    human-split items (item_id, title, signals) for the fitted score. With `cfg.select` best, only each item's
    best-scored candidate goes before the method. Returns (decision, the trusted fit's metrics)."""
    by_id = items.set_index("item_id", drop=False)
    records = [by_id.loc[i].to_dict() for i in annotations["item_id"]]
    captions = list(annotations["caption"])
    pool = items[items["item_id"].isin(annotations["item_id"])]
    fit, fit_metrics = None, {}
    if cfg.score == "nll":
        logprobs = token_logprobs(captions, records, llm, task, "denoise")
        frame = pd.DataFrame({"nll": mean_nll(logprobs)})
    else:
        frame = features(captions, records, llm, task, pool.to_dict("records"))
        logprobs = list(frame["logprobs"])
    if cfg.score == "fitted":
        if len(trusted) < 4:
            raise InputError(f"denoise.score fitted needs at least 4 human-split items, found {len(trusted)}")
        pair_captions, pair_items, kind = trusted_pairs(trusted, pool, task, seed)
        fit = fit_trusted(features(pair_captions, pair_items, llm, task, pool.to_dict("records")), kind, seed)
        fit_metrics = {"trusted_tpr": fit.tpr, "trusted_fpr": fit.fpr}
    scores = noise_scores(cfg.score, frame, fit)
    selection = scores
    if cfg.select == "consensus":
        content = frame["content"] if "content" in frame else content_distance(captions, records, task)
        selection = consensus(annotations["item_id"], captions, mean_nll(logprobs), np.asarray(content))
    best = best_per_item(annotations["item_id"], selection) if cfg.select != "all" else np.ones(len(scores), bool)
    level = fit.noise_level(frame[best]) if fit is not None and cfg.method == "adatailr" else None
    chosen = [lp for lp, keep in zip(logprobs, best) if keep]
    decision = decide(cfg.method, chosen, cfg, seed, scores[best], level)
    return with_outranked(decision, best, scores, annotations["item_id"], selection), fit_metrics


def decision_table(annotations: pd.DataFrame, decision: Decision) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": annotations["item_id"].values,
            "candidate": annotations["candidate"].values,
            "caption": annotations["caption"].values,
            "method": decision.method,
            "noise_score": decision.noise_score,
            "threshold": min(decision.threshold, np.finfo(float).max),
            "kept": decision.kept,
            "reason": decision.reasons(),
        }
    )


def histogram(scores: np.ndarray, threshold: float, method: str):
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(scores, bins=20, color="#4c78a8")
    if np.isfinite(threshold):
        axis.axvline(threshold, color="#e45756", linestyle="--", label=f"drop threshold {threshold:.2f}")
        axis.legend()
    axis.set_xlabel(f"noise score ({method})")
    axis.set_ylabel("annotations")
    axis.set_title("Annotation noise scores")
    return figure


def dataset_quality(
    frame: pd.DataFrame, outranked: np.ndarray, references: pd.Series, metrics: tuple[str, ...]
) -> dict[str, float]:
    """Quality of all / kept / dropped (by the method) / outranked (best-of-n losers) annotations against the human
    references with the task's metrics, and the diversity of the kept ones."""
    scores = pd.DataFrame(reference_scores(list(frame["caption"]), list(references.loc[frame["item_id"]]), metrics))
    quality = {"annotations_distinct_2": distinct_n(list(frame.loc[frame["kept"], "caption"]), 2)}
    for group, rows in (
        ("all", frame.index),
        ("kept", frame.index[frame["kept"]]),
        ("dropped", frame.index[~frame["kept"] & ~outranked]),
        ("outranked", frame.index[outranked]),
    ):
        for metric in scores.columns:
            if len(rows):
                quality[f"quality_{group}_{metric}"] = float(scores.loc[rows, metric].mean())
    return quality


def selection_quality(
    annotations: pd.DataFrame, items: pd.DataFrame, task: Task, consensus_picks: np.ndarray | None = None
) -> dict[str, float]:
    """What each best-of-n pick would have sent on, scored against the human references (exact match where the task
    is scored on it, else ROUGE-L: string metrics, cheap on every candidate), whichever
    `denoise.select` the turn uses: the lowest generation NLL, the consensus pick (`consensus_picks` where the turn
    already made it), and a random candidate (the mean over each item's candidates). Nothing with one candidate per
    item."""
    ids = annotations["item_id"]
    if len(annotations) == 0 or ids.value_counts().max() < 2:
        return {}
    by_id = items.set_index("item_id", drop=False)
    records, captions = [by_id.loc[i].to_dict() for i in ids], list(annotations["caption"])
    metric = "exact_match" if "exact_match" in task.metrics else "rouge_l"
    scores = REFERENCE_METRICS[metric](captions, [r["reference"] for r in records])
    quality = pd.Series(scores, index=annotations.index)
    nll = -annotations["mean_logprob"].to_numpy()
    picks = {"nll": best_per_item(ids, nll)}
    if consensus_picks is None:
        consensus_picks = best_per_item(ids, consensus(ids, captions, nll, content_distance(captions, records, task)))
    picks["consensus"] = consensus_picks
    metrics = {f"quality_pick_{name}_{metric}": float(quality[mask].mean()) for name, mask in picks.items()}
    metrics[f"quality_pick_random_{metric}"] = float(quality.groupby(ids.values).mean().mean())
    return metrics


def trusted_window(ctx: StageContext, count: int) -> pd.DataFrame:
    """The `count` human-split items right after this turn's refine window (the next turn's, when the counts
    match): titles the turn's scorer has not trained on, unlike its own window, whose right pairs it would score
    as better than any annotation. The window wraps around the split like every turn window."""
    human = ctx.items("human")
    seen = ctx.settings.refine.items_per_turn if "refine" in ctx.upstream else 0
    start = (ctx.turn - 1) * seen + seen
    positions = [(start + offset) % len(human) for offset in range(min(count, len(human)))]
    return human.iloc[positions].reset_index(drop=True)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.settings.denoise
    annotations = ctx.read("annotate", "annotations")
    items = ctx.prompt_items()
    trusted = trusted_window(ctx, cfg.trusted_items) if cfg.score == "fitted" else items.iloc[0:0]
    task, seed = ctx.settings.task, ctx.settings.seed
    scorer = ctx.llm_factory(ctx.turn_model)
    decision, fit_metrics = noise_decision(cfg, annotations, items, trusted, scorer, task, seed)
    frame = decision_table(annotations, decision)
    outranked = decision.lost
    if len(frame):
        figure = histogram(decision.noise_score[~outranked], decision.threshold, cfg.method)
        ctx.mlrun.log_figure(figure, "noise_scores.png")
        plt.close(figure)
    kept = int(frame["kept"].sum())
    metrics = {"dropped": len(frame) - kept - int(outranked.sum()), "outranked": int(outranked.sum()), "kept": kept}
    metrics |= {"gamma": decision.gamma, **fit_metrics}
    if decision.noise_level is not None:
        metrics["noise_level"] = decision.noise_level
    if len(frame):
        metrics |= dataset_quality(frame, outranked, items.set_index("item_id")["reference"], task.metrics)
        metrics |= selection_quality(annotations, items, task, ~outranked if cfg.select == "consensus" else None)
    summary = {"method": cfg.method, "gamma": decision.gamma, "min_weight": cfg.min_weight}
    return StageOutput({"denoised": frame}, rows_in=len(annotations), metrics=metrics, summary=summary)


STAGE = StageDef(
    name="denoise",
    outputs=(DENOISED,),
    upstream=("ingest", "context", "refine", "annotate"),
    sections=("data", "task", "denoise"),
    run=run,
)
