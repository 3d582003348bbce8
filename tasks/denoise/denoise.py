"""Noise control: every annotation gets a noise score from the current model, and the noisy tail is dropped.

Noise score = minus the mean token log-prob of the caption given its item, under the turn's model (teacher-forced,
through the LLM-call cache: scoring the model's own finished generations is free). The `drop_quantile` noisiest
annotations are marked dropped; drops are recorded with their reason, never deleted. AdaTaiLr (adaptive tail and
TaiLr-weighted training) replaces this fixed-quantile rule in its own issue, behind the same table.

Input: `annotations`, `items`.
Output columns (`denoised`): item_id, candidate, caption, noise_score, threshold, kept, reason.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stores.schema import Column, TableSpec  # noqa: E402
from tasks.prompts import caption_messages  # noqa: E402
from tasks.stage import StageContext, StageDef, StageOutput  # noqa: E402

DENOISED = TableSpec(
    "denoised",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("candidate", "INTEGER", min_value=0),
        Column("caption", "VARCHAR", min_length=1),
        Column("noise_score", "DOUBLE", min_value=0.0),
        Column("threshold", "DOUBLE", min_value=0.0),
        Column("kept", "BOOLEAN"),
        Column("reason", "VARCHAR"),
    ),
    key=("item_id", "candidate"),
)


def noise_scores(annotations: pd.DataFrame, items: pd.DataFrame, llm, max_signal_chars: int) -> np.ndarray:
    by_id = items.set_index("item_id").to_dict("index")
    prompts = [caption_messages({"item_id": i, **by_id[i]}, max_signal_chars) for i in annotations["item_id"]]
    scored = llm.score(prompts, list(annotations["caption"]), desc="denoise")
    return np.array([-float(np.mean(s.token_logprobs)) for s in scored])


def tail_threshold(scores: np.ndarray, drop_quantile: float) -> float:
    """Scores above this are the noisy tail; with drop_quantile 0 nothing is dropped."""
    if drop_quantile == 0 or len(scores) == 0:
        return float("inf")
    return float(np.quantile(scores, 1.0 - drop_quantile, method="higher"))


def mark_tail(annotations: pd.DataFrame, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    kept = scores < threshold if np.isfinite(threshold) else np.ones(len(scores), dtype=bool)
    return pd.DataFrame(
        {
            "item_id": annotations["item_id"].values,
            "candidate": annotations["candidate"].values,
            "caption": annotations["caption"].values,
            "noise_score": scores,
            "threshold": min(threshold, np.finfo(float).max),
            "kept": kept,
            "reason": np.where(kept, "", f"noise score in the top tail (>= {threshold:.3f})"),
        }
    )


def histogram(scores: np.ndarray, threshold: float):
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(scores, bins=20, color="#4c78a8")
    if np.isfinite(threshold):
        axis.axvline(threshold, color="#e45756", linestyle="--", label=f"drop threshold {threshold:.2f}")
        axis.legend()
    axis.set_xlabel("noise score (− mean token log-prob)")
    axis.set_ylabel("annotations")
    axis.set_title("Annotation noise scores")
    return figure


def run(ctx: StageContext) -> StageOutput:
    annotations = ctx.read("annotate", "annotations")
    items = ctx.read("ingest", "items")
    scores = noise_scores(annotations, items, ctx.llm, ctx.settings.data.max_signal_chars)
    threshold = tail_threshold(scores, ctx.settings.denoise.drop_quantile)
    frame = mark_tail(annotations, scores, threshold)
    if len(scores):
        figure = histogram(scores, threshold)
        ctx.mlrun.log_figure(figure, "noise_scores.png")
        plt.close(figure)
    dropped = int((~frame["kept"]).sum())
    metrics = {"dropped": dropped, "kept": len(frame) - dropped, "mean_noise_score": float(np.mean(scores))}
    return StageOutput({"denoised": frame}, rows_in=len(annotations), metrics=metrics)


STAGE = StageDef(
    name="denoise", outputs=(DENOISED,), upstream=("ingest", "annotate"), sections=("data", "denoise"), run=run
)
