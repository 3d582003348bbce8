"""Noise scores: what ranks an annotation as likely wrong (higher = noisier), chosen by `denoise.score`.

  nll      mean token NLL of the annotation given its item (TaiLr's own quantity). It sees fluency more than
           meaning: a fluent title of the wrong item scores like a right one.
  pmi      how little the item explains the annotation: the mean over its tokens of
           log p(a_t | no item) − log p(a_t | item). Fluency cancels; what is left is the item's evidence.
  content  1 − MiniLM cosine between the annotation and the item's content (abstract, else curator comment).
  contrast how much better the annotation fits one of the item's closest other items than the item itself: the
           max over its NEIGHBOURS nearest items of the pool being scored (MiniLM over content) of
           mean log p(a | neighbour) − mean log p(a | item). A right title fits its own item best; the title of a
           similar item, fluent and on topic, often fits that item's neighbourhood better. It needs close
           neighbours in the pool: with a small or scattered pool it says little.
  fitted   how likely wrong, from two detectors fitted on trusted pairs of the human split:
           wrong item   a logistic regression on nll, pmi, content and contrast; each human title with its own item
                        (right) and with two other items of the pool it is scored among (wrong): the one whose
                        content is most like its own (the hard way) and a random one;
           unfinished   a logistic regression on `end` (the NLL of the end-of-caption token: does the model expect
                        the caption to stop there?) and nll; each human title whole (right) and cut after 30-60% of
                        its words (wrong: what a generation stopped at its token limit looks like).
           The score is log(LR_wrong_item + LR_unfinished), each detector's log-odds at even odds being its log
           likelihood ratio: either kind of wrong ranks high, and an annotation that is a little of both ranks above
           one that is only a little of one. (One linear fit of both kinds loses the hard kind, a wrong-item title
           ending well; a noisy OR of the two probabilities ranked slightly worse on the bench.)
           A third, `wrong_detail` (WITH_DETAIL; the bench's `fitted_with_detail`), is measured but not in the
           default: a logistic regression on peak_nll (the NLL of the caption's most surprising token, its end left
           out), peak_pmi (the most any one token is less likely given the item than given nothing), nll and pmi,
           fitted on each human title against the same title with one term swapped for a term of the most similar
           item's title. On two bench slices it ranked swapped key terms 0.045-0.11 AUROC higher but near-neighbour
           titles 0.015-0.041 lower (below the 0.85 goal at 20%), and its pairs are the bench's own family of error.

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
from tasks.denoise.corrupt import swap_word, truncate
from tasks.llm.embeddings import embed, similarity
from tasks.prompts import item_content, prompt_messages

SCORES = ("nll", "pmi", "content", "contrast", "fitted")
WRONG_ITEM = ["nll", "pmi", "content", "contrast"]
NEIGHBOURS = 3  # contrast: each annotation is also scored with this many of its item's closest other items
UNFINISHED = ["end", "nll"]
WRONG_DETAIL = ["peak_nll", "peak_pmi", "nll", "pmi"]
DETECTORS = {"wrong_item": WRONG_ITEM, "unfinished": UNFINISHED}
WITH_DETAIL = DETECTORS | {"wrong_detail": WRONG_DETAIL}


def token_logprobs(captions: list[str], items: list[dict], llm, task: Task, desc: str) -> list[np.ndarray]:
    """Per-token log-probs of each caption given its item (an empty item: given nothing)."""
    prompts = [prompt_messages(item, task) for item in items]
    return [np.asarray(s.token_logprobs) for s in llm.score(prompts, captions, desc=desc)]


def features(captions: list[str], items: list[dict], llm, task: Task, pool: list[dict]) -> pd.DataFrame:
    """nll, pmi, content, contrast (against neighbours from `pool`, the items the annotations are scored among), end
    (the end-of-caption token's NLL), peak_nll and peak_pmi (over the tokens before the end) of each (caption, item),
    plus the conditional token log-probs (TaiLr weights use them)."""
    conditional = token_logprobs(captions, items, llm, task, "denoise")
    unconditional = token_logprobs(captions, [{}] * len(captions), llm, task, "denoise/prior")
    own_fit = np.array([float(np.mean(lp)) for lp in conditional])
    both = list(zip(conditional, unconditional))
    return pd.DataFrame(
        {
            "nll": -own_fit,
            "pmi": [float(np.mean(u - c)) for c, u in both],
            "content": content_distance(captions, items, task),
            "contrast": contrast(captions, items, own_fit, pool, llm, task),
            "end": [-float(lp[-1]) if len(lp) else 0.0 for lp in conditional],
            "peak_nll": [-float(np.min(c[:-1])) if len(c) > 1 else 0.0 for c in conditional],
            "peak_pmi": [float(np.max((u - c)[:-1])) if len(c) > 1 else 0.0 for c, u in both],
            "logprobs": conditional,
        }
    )


def content_distance(captions: list[str], items: list[dict], task: Task) -> np.ndarray:
    """1 − MiniLM cosine between each caption and its item's content (the caption itself where the item has none)."""
    if not captions:
        return np.zeros(0)
    contents = [item_content(item, task) or caption for item, caption in zip(items, captions)]
    return 1.0 - similarity([c.strip() or "(empty)" for c in captions], contents)


def contrast(
    captions: list[str], items: list[dict], own_fit: np.ndarray, pool: list[dict], llm, task: Task
) -> np.ndarray:
    """max over the item's NEIGHBOURS closest other items of `pool` of the caption's mean token log-prob given that
    item, minus `own_fit` (given its own item); 0 where the pool holds no other item."""
    closest = nearest(items, pool, task, NEIGHBOURS)
    if not captions or closest.shape[1] == 0:
        return np.zeros(len(captions))
    best = np.full(len(captions), -np.inf)
    for column in closest.T:
        fits = token_logprobs(captions, [pool[j] for j in column], llm, task, "denoise/neighbours")
        best = np.maximum(best, [float(np.mean(lp)) for lp in fits])
    return best - own_fit


def nearest(records: list[dict], pool: list[dict], task: Task, count: int) -> np.ndarray:
    """(len(records), count) rows of `pool`: each record's most similar items there, closest first, never its own
    item (MiniLM over content, else the title)."""
    count = min(count, len(pool) - 1)
    if not records or count <= 0:
        return np.zeros((len(records), 0), dtype=int)
    text = lambda r: item_content(r, task) or r.get("reference") or ""  # noqa: E731
    texts, rows = np.unique([text(r) for r in records], return_inverse=True)  # many candidates share one item
    closeness = embed(list(texts))[rows.ravel()] @ embed([text(r) for r in pool]).T
    pool_ids = np.array([r.get("item_id") for r in pool], dtype=object)
    for row, record in enumerate(records):
        closeness[row, pool_ids == record.get("item_id")] = -np.inf
    return np.argsort(-closeness, axis=1, kind="stable")[:, :count]


def trusted_pairs(
    human: pd.DataFrame, pool: pd.DataFrame, task: Task, seed: int, details: bool = False
) -> tuple[list[str], list[dict], np.ndarray]:
    """(captions, items, kind): every human reference with its own item (kind "right"), with the item of
    `pool` whose content is most like its own and with a random other item of `pool` ("wrong_item"; the pool is
    what the annotations are scored among, so the hard pairs are as close as an annotator's mix-ups there), cut
    after 30-60% of its words ("unfinished"), and with `details`, with its own item but one term swapped for one
    of that closest item's title ("wrong_detail", where both titles have such terms)."""
    rng = np.random.default_rng(seed)
    records = human.to_dict("records")
    ids = {r["item_id"] for r in records}
    candidates = records + [r for r in pool.to_dict("records") if r["item_id"] not in ids]
    closest = nearest(records, candidates, task, 1)[:, 0]
    random_other = [(i + 1 + rng.integers(len(candidates) - 1)) % len(candidates) for i in range(len(records))]
    titles = [r["reference"] for r in records]
    captions = titles * 3 + [truncate(title, rng) for title in titles]
    items = records + [candidates[j] for j in closest] + [candidates[j] for j in random_other] + records
    kind = ["right"] * len(records) + ["wrong_item"] * 2 * len(records) + ["unfinished"] * len(records)
    if details:
        for title, j, record in zip(titles, closest, records):
            if (swapped := swap_word(title, candidates[j]["reference"], rng)) is not None:
                captions.append(swapped)
                items.append(record)
                kind.append("wrong_detail")
    return captions, items, np.array(kind)


@dataclass(frozen=True)
class TrustedFit:
    """The detectors (standardized logistic regressions, each with its features), the score above which an
    annotation is called wrong and the cross-validated error rates there on the trusted pairs."""

    detectors: dict[str, tuple[object, tuple[str, ...]]]
    threshold: float
    tpr: float
    fpr: float

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return joint_score(
            [model.decision_function(frame[list(columns)].to_numpy()) for model, columns in self.detectors.values()]
        )

    def noise_level(self, frame: pd.DataFrame) -> float:
        """Adjusted classify-and-count; clipped to [0, 0.5] (clean annotations are assumed the majority)."""
        called = float((self.score(frame) >= self.threshold).mean())
        if self.tpr - self.fpr < 0.1:  # the fit cannot tell right from wrong: no estimate better than none
            return 0.0
        return float(np.clip((called - self.fpr) / (self.tpr - self.fpr), 0.0, 0.5))


def joint_score(log_odds: list[np.ndarray]) -> np.ndarray:
    """log(sum of the detectors' likelihood ratios) from their log-odds."""
    return np.logaddexp.reduce(np.vstack(log_odds), axis=0)


def fit_trusted(
    trusted: pd.DataFrame, kind: np.ndarray, seed: int, detectors: dict[str, list[str]] = DETECTORS
) -> TrustedFit:
    """Each detector is fitted on the right pairs against its kind of wrong one (a kind with under two pairs has no
    detector); its out-of-fold log-odds on its own pairs and its plain ones on the other kinds' give the joint
    score's error rates. The threshold is where they are furthest apart (tpr − fpr largest: the adjusted count's
    least variance, Forman's "max" rule), not at even odds, where detectors that each call half their pairs wrong
    call too many clean ones together. `detectors` other than the default are for ablations (the bench's fits
    without contrast and with the wrong-detail detector)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kind = np.asarray(kind)
    fitted, honest = {}, []  # rows of a kind without a detector here (an ablation's) are left out below
    for wrong_kind, columns in detectors.items():
        rows = np.isin(kind, ["right", wrong_kind])
        wrong = (kind[rows] == wrong_kind).astype(int)
        if wrong.sum() < 2:  # too few to fit and cross-validate
            continue
        x = trusted.loc[rows, columns].to_numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression())
        splits = min(5, int(wrong.sum()), int((wrong == 0).sum()))
        folds = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
        fitted[wrong_kind] = (model.fit(x, wrong), tuple(columns))
        log_odds = model.decision_function(trusted[columns].to_numpy())
        log_odds[rows] = cross_val_predict(model, x, wrong, cv=folds, method="decision_function")
        honest.append(log_odds)
    considered = np.isin(kind, ["right", *fitted])
    score, wrong = joint_score(honest)[considered], kind[considered] != "right"
    rates = [(float((score[wrong] >= t).mean()), float((score[~wrong] >= t).mean()), t) for t in score]
    tpr, fpr, threshold = max(rates, key=lambda r: r[0] - r[1])
    return TrustedFit(fitted, float(threshold), tpr, fpr)


def noise_scores(score: str, frame: pd.DataFrame, fit: TrustedFit | None) -> np.ndarray:
    if score == "fitted":
        if fit is None:
            raise ValueError("the fitted noise score needs a trusted fit (human-split items)")
        return fit.score(frame)
    if score not in WRONG_ITEM:
        raise ValueError(f"unknown noise score {score!r}; scores: {', '.join(SCORES)}")
    return frame[score].to_numpy(dtype=float)
