"""Output-quality measures shared by the scoreboard, the dataset-quality numbers and the experiment report: against
a human reference, ROUGE-L and MiniLM similarity (free text) or exact match (a short or multiple-choice answer: its
mean is accuracy); distinct-n diversity, mean length, and the paired bootstrap interval of a mean difference (the same
resampling everywhere, so intervals are comparable). A task names the reference metrics it is scored on
(`task.metrics`); `REFERENCE_METRICS` is every one a task can name.
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


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer is the reference, up to case and surrounding white space."""
    return float(" ".join(prediction.split()).casefold() == " ".join(str(reference).split()).casefold())


def _minilm_sim(texts: list[str], references: list[str]) -> list[float]:
    from tasks.llm.embeddings import similarity

    return list(similarity([t or "(empty)" for t in texts], references)) if texts else []


REFERENCE_METRICS = {
    "rouge_l": lambda texts, references: [rouge_l(t, r) for t, r in zip(texts, references)],
    "minilm_sim": _minilm_sim,
    "exact_match": lambda texts, references: [exact_match(t, r) for t, r in zip(texts, references)],
}


def reference_scores(
    texts: list[str], references: list[str], metrics: tuple[str, ...] = ("rouge_l", "minilm_sim")
) -> dict[str, list[float]]:
    """Per text, each named metric against its human reference."""
    return {name: REFERENCE_METRICS[name](texts, references) for name in metrics}


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts (lower-cased words): 1.0 means no n-gram repeats; a
    self-training loop that collapses onto a few phrasings drives it down."""
    grams = [tuple(words[i : i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def answer_entropy(answers: list[str], choices: tuple[str, ...]) -> float:
    """Entropy of the given answers' distribution over the choices, in units of the uniform distribution's: 1.0 is
    every choice equally often, 0.0 one answer for everything (or none given), the collapse a self-training loop on
    its own majority answer drifts into."""
    counts = np.array([answers.count(choice) for choice in choices], dtype=float)
    if counts.sum() == 0:
        return 0.0
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum() / np.log(len(choices))) + 0.0  # + 0.0: never -0.0


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
