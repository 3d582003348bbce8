"""Noise scores: what ranks an annotation as likely wrong (higher = noisier), chosen by `denoise.score`.

  nll      mean token NLL of the annotation given its item (TaiLr's own quantity). It sees fluency more than
           meaning: a fluent title of the wrong item scores like a right one.
  pmi      how little the item explains the annotation: the mean over its tokens of
           log p(a_t | no item) − log p(a_t | item). Fluency cancels; what is left is the item's evidence.
  content  1 − MiniLM cosine between the annotation and the item's content (abstract, else curator comment).
  fitted   P(wrong) from a logistic regression on the three, fitted on trusted pairs of the human split: every
           human title with its own item (right) and with the most similar other human item (wrong, the hard way).

The trusted fit also measures itself: its cross-validated true and false positive rates turn the share of
annotations it calls wrong into a noise-level estimate that needs no assumption on the tail's shape (adjusted
classify-and-count, Forman 2008): ε̂ = (p̂ − fpr) / (tpr − fpr). It assumes the annotations' errors look like the
trusted wrong pairs and their right answers like human titles; with model-written annotations the second holds
less well (their style is the model's), and that is where this estimate can drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.config import Task
from tasks.llm.embeddings import embed, similarity
from tasks.prompts import item_content, prompt_messages

SCORES = ("nll", "pmi", "content", "fitted")
FEATURES = ["nll", "pmi", "content"]


def token_logprobs(captions: list[str], items: list[dict], llm, task: Task, desc: str) -> list[np.ndarray]:
    """Per-token log-probs of each caption given its item (an empty item: given nothing)."""
    prompts = [prompt_messages(item, task) for item in items]
    return [np.asarray(s.token_logprobs) for s in llm.score(prompts, captions, desc=desc)]


def features(captions: list[str], items: list[dict], llm, task: Task) -> pd.DataFrame:
    """nll, pmi and content of each (caption, item), plus the conditional token log-probs (TaiLr weights use them)."""
    conditional = token_logprobs(captions, items, llm, task, "denoise")
    unconditional = token_logprobs(captions, [{}] * len(captions), llm, task, "denoise/prior")
    return pd.DataFrame(
        {
            "nll": [-float(np.mean(lp)) for lp in conditional],
            "pmi": [float(np.mean(u - c)) for c, u in zip(conditional, unconditional)],
            "content": content_distance(captions, items, task),
            "logprobs": conditional,
        }
    )


def content_distance(captions: list[str], items: list[dict], task: Task) -> np.ndarray:
    """1 − MiniLM cosine between each caption and its item's content (the caption itself where the item has none)."""
    if not captions:
        return np.zeros(0)
    contents = [item_content(item, task) or caption for item, caption in zip(items, captions)]
    return 1.0 - similarity([c.strip() or "(empty)" for c in captions], contents)


def nearest_others(records: list[dict], task: Task) -> np.ndarray:
    """Each item's most similar other item (row index), by MiniLM over its content."""
    vectors = embed([item_content(r, task) or r["reference"] for r in records])
    closeness = vectors @ vectors.T
    np.fill_diagonal(closeness, -np.inf)
    return closeness.argmax(axis=1)


def trusted_pairs(human: pd.DataFrame, task: Task) -> tuple[list[str], list[dict], np.ndarray]:
    """(captions, items, wrong): every human reference with its own item (wrong = 0), then with the item whose content
    is most similar to its own (wrong = 1)."""
    records = human.to_dict("records")
    nearest = nearest_others(records, task)
    captions = [r["reference"] for r in records] * 2
    items = records + [records[j] for j in nearest]
    return captions, items, np.r_[np.zeros(len(records)), np.ones(len(records))]


@dataclass(frozen=True)
class TrustedFit:
    """A logistic regression on standardized features and its cross-validated error rates on the trusted pairs."""

    model: object
    tpr: float
    fpr: float

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(frame[FEATURES].to_numpy())[:, 1]

    def noise_level(self, frame: pd.DataFrame) -> float:
        """Adjusted classify-and-count; clipped to [0, 0.5] (clean annotations are assumed the majority)."""
        called = float((self.probability(frame) >= 0.5).mean())
        if self.tpr - self.fpr < 0.1:  # the fit cannot tell right from wrong: no estimate better than none
            return 0.0
        return float(np.clip((called - self.fpr) / (self.tpr - self.fpr), 0.0, 0.5))


def fit_trusted(trusted: pd.DataFrame, wrong: np.ndarray, seed: int) -> TrustedFit:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = trusted[FEATURES].to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression())
    folds = StratifiedKFold(n_splits=min(5, int(wrong.sum())), shuffle=True, random_state=seed)
    called = cross_val_predict(model, x, wrong, cv=folds, method="predict_proba")[:, 1] >= 0.5
    tpr, fpr = float(called[wrong == 1].mean()), float(called[wrong == 0].mean())
    return TrustedFit(model.fit(x, wrong), tpr, fpr)


def noise_scores(score: str, frame: pd.DataFrame, fit: TrustedFit | None) -> np.ndarray:
    if score == "fitted":
        if fit is None:
            raise ValueError("the fitted noise score needs a trusted fit (human-split items)")
        return fit.probability(frame)
    if score not in FEATURES:
        raise ValueError(f"unknown noise score {score!r}; scores: {', '.join(SCORES)}")
    return frame[score].to_numpy(dtype=float)
