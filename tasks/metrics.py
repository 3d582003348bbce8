"""Text-quality measures shared by the scoreboard, the dataset-quality numbers and the experiment report: ROUGE-L
and MiniLM similarity against a human reference, distinct-n diversity, mean length, and the paired bootstrap
interval of a mean difference (the same resampling everywhere, so intervals are comparable).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def reference_scores(texts: list[str], references: list[str]) -> dict[str, list[float]]:
    """Per text: ROUGE-L F1 and MiniLM cosine similarity against its human reference."""
    from tasks.llm.embeddings import similarity

    return {
        "rouge_l": [rouge_l(t, r) for t, r in zip(texts, references)],
        "minilm_sim": list(similarity([t or "(empty)" for t in texts], references)) if texts else [],
    }


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts (lower-cased words): 1.0 means no n-gram repeats; a
    self-training loop that collapses onto a few phrasings drives it down."""
    grams = [tuple(words[i : i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_words(texts: list[str]) -> float:
    return float(np.mean([len(t.split()) for t in texts])) if texts else 0.0


def paired_bootstrap(diff: np.ndarray, seed: int, resamples: int = 2000) -> tuple[float, float, float]:
    """(mean, 2.5% and 97.5% quantiles) of the mean of per-item differences, items resampled with replacement."""
    diff = np.asarray(diff, dtype=float)
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
    boot = diff[draws].mean(axis=1)
    return float(diff.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
